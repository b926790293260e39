"""A sweep as a table (text, Markdown, CSV, JSON), a DataFrame and a plot: :class:`SweepResult`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..aggregation.sweep import FIGURES, STATUS_OK, SweepData
from ..units import format_bytes
from ..vocabulary import Format, Mode
from .plots import plot_sweep
from .result import Result
from .tables import render_csv, render_json, render_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SweepResult"]


class SweepResult(SweepData, Result):
    """A sweep's rows (:class:`~memprof.aggregation.sweep.SweepData`), renderable and plottable."""

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (model, batch size); bytes as integers (missing: NA), savings in percent."""
        import pandas as pd

        cols = ["model", "batch_size", "status", *FIGURES, *(f"{f}_saving_pct" for f in FIGURES)]
        df = pd.DataFrame(self.rows, columns=cols)
        for f in FIGURES:
            df[f] = df[f].astype("Int64")
        for f in FIGURES:
            df[f"{f}_saving_pct"] = df[f"{f}_saving_pct"].astype("float64").round(2)
        return df

    def to_csv(self, comment: str | None = None) -> str:
        """CSV of :meth:`to_dataframe` (raw bytes; an optional ``# comment`` first line)."""
        return render_csv(self.to_dataframe(), comment=comment)

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure: settings, rows, notes."""
        return {**super().to_dict(), "notes": self.notes_text()}

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return render_json(self.to_dict())

    @property
    def kind(self) -> str:
        """``estimated`` or ``measured``: the label of the step figures."""
        return str(self.mode)

    @property
    def title(self) -> str:
        """One line naming the sweep's settings."""
        return (f"memprof sweep: {', '.join(self.models)} at batch {', '.join(map(str, self.batch_sizes))} "
                f"({self.kind} steps, {self.device}, {self.dtype}, {self.optimizer})")

    def notes_text(self) -> list[str]:
        """The lines under the table: what each column is, and the reference of the savings."""
        return [
            f"seed conv.: the deck's convention (output elements of conv, BN, pool and linear layers per "
            f"sample x batch x element size); autograd-saved: bytes autograd saves in one forward "
            f"(meta-device pass, exact sizes); step peak and activation peak: one steady-state training "
            f"step, {self.kind}" + (" (tensor-owned bytes, FakeTensorMode)" if self.mode == Mode.ESTIMATED else "")
            + "; activation peak = live bytes other than parameters, gradients and optimizer state.",
            f"saving: 1 - figure / {self.reference}'s figure at the same batch size.",
            "MiB = 2^20 bytes (the deck's 'MB' are MiB).",
            *self.notes,
        ]

    def _display(self) -> pd.DataFrame:
        df = self.to_dataframe()
        keep = ["model", "batch_size", "seed_activation_bytes", "saved_bytes", "activation_peak_bytes",
                "peak_bytes", "activation_peak_bytes_saving_pct", "seed_activation_bytes_saving_pct"]
        if (df["status"] != STATUS_OK).any():
            keep.insert(2, "status")
        return df[keep]

    def _render(self, fmt: Format) -> str:
        import pandas as pd

        def mib(v: Any) -> str:
            return "" if pd.isna(v) else format_bytes(int(v), "MiB")

        def pct(v: Any) -> str:
            return "" if pd.isna(v) else f"{v:.1f}%"

        headers = {
            "batch_size": "batch", "seed_activation_bytes": "seed conv.", "saved_bytes": "autograd-saved",
            "activation_peak_bytes": f"activation peak ({self.kind})", "peak_bytes": f"step peak ({self.kind})",
            "activation_peak_bytes_saving_pct": "saving (act. peak)",
            "seed_activation_bytes_saving_pct": "saving (seed conv.)",
        }
        formatters: dict[str, Callable[[Any], str]] = {f: mib for f in FIGURES}
        formatters.update({"activation_peak_bytes_saving_pct": pct, "seed_activation_bytes_saving_pct": pct})
        return render_table(self._display(), fmt, title=self.title, notes=self.notes_text(),
                            headers=headers, formatters=formatters)

    def plot(self, path: str | Path | None = None) -> Any:
        """Memory against batch size per model, and the savings in percent (see rendering.plots).

        Args:
            path: write a PNG there if given.

        Returns:
            The matplotlib Figure.
        """
        return plot_sweep(self.to_dataframe(), path, reference=self.reference, kind=self.kind,
                          title=self.title)
