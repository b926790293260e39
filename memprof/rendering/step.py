"""One training step's profile as text, Markdown, CSV, JSON, a DataFrame and a timeline plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..aggregation.step import StepProfileData
from ..units import format_bytes
from ..vocabulary import Format
from .plots import plot_step_timeline
from .result import Result
from .tables import render_csv, render_json, render_sections, render_table

__all__ = ["StepProfile"]


class StepProfile(StepProfileData, Result):
    """Memory of one training step (:class:`~memprof.aggregation.step.StepProfileData`), renderable.

    ``print()`` it, or call ``to_dataframe()`` (module rows), ``to_json()``, ``to_csv()``,
    ``render(format)`` or ``plot(path)`` (live bytes by category over the step).
    """

    def to_json(self) -> str:
        """JSON with the keys of :meth:`to_dict` (bytes as integers), ending with a newline."""
        return render_json(self.to_dict())

    def to_dataframe(self) -> Any:
        """The module rows as a pandas DataFrame (bytes as integers)."""
        import pandas as pd

        return pd.DataFrame(self.modules)

    def to_csv(self) -> str:
        """The module rows as CSV."""
        return render_csv(self.to_dataframe())

    def _frames(self) -> tuple[Any, Any, Any]:
        import pandas as pd

        kind = str(self.mode)
        summary = [
            ("model", self.model),
            ("batch size", str(self.batch_size)),
            ("device / dtype / optimizer", f"{self.device} / {self.dtype} / {self.optimizer}"),
            ("mode", self.mode),
            (f"peak ({kind})", format_bytes(self.peak_bytes, "MiB")),
        ]
        if self.reserved_peak_bytes is not None:
            summary.append((f"reserved peak ({kind})", format_bytes(self.reserved_peak_bytes, "MiB")))
        summary += [
            ("attributed peak (tensor-owned)", format_bytes(self.attributed_peak_bytes, "MiB")),
            ("activation peak", format_bytes(self.activation_peak_bytes, "MiB")),
        ]
        for ph, row in self.phases.items():
            summary.append((f"{ph} peak", _fmt(row["peak_bytes"])))
        if self.step_time_s is not None:
            summary.append(("step time", f"{self.step_time_s:.3f} s"))
        total = max(self.peak_bytes, 1)
        breakdown = [(k, v, 100 * v / total) for k, v in self.at_peak.items()]
        breakdown.append(("total", sum(self.at_peak.values()), 100 * sum(self.at_peak.values()) / total))
        return (
            pd.DataFrame(summary, columns=["figure", "value"]),
            pd.DataFrame(breakdown, columns=["category", "bytes", "share"]),
            self.to_dataframe(),
        )

    def _render(self, fmt: Format, max_modules: int | None = None) -> str:
        summary, breakdown, modules = self._frames()
        if max_modules is not None:
            modules = modules.head(max_modules)
        cols = ["name", "type", "calls", "forward_peak_bytes", "forward_increase_bytes",
                "backward_peak_bytes", "backward_increase_bytes"]
        cols += [c for c in modules.columns if c.endswith("allocated_peak_bytes")]
        modules = modules[cols].copy()
        modules["name"] = modules["name"].replace("", "(model)")
        byte_fmt = {c: _fmt_any for c in cols if c.endswith("_bytes")}
        return render_sections([
            render_table(summary, fmt, title=f"Training step: {self.model}"),
            render_table(
                breakdown, fmt, title="At the peak",
                formatters={"bytes": _fmt_any, "share": lambda v: f"{v:.1f}%"},
                notes=["unattributed: allocator bytes no tensor owns (kernel workspaces, rounding)"],
            ),
            render_table(
                modules, fmt, title="Per module",
                headers={"forward_peak_bytes": "fwd peak", "forward_increase_bytes": "fwd +",
                         "backward_peak_bytes": "bwd peak", "backward_increase_bytes": "bwd +",
                         "forward_allocated_peak_bytes": "fwd peak (allocator)",
                         "backward_allocated_peak_bytes": "bwd peak (allocator)"},
                formatters=byte_fmt,
                notes=["peak: live bytes of the whole step while the module runs; +: above the bytes "
                       "live when it started; backward includes recomputation in reversible blocks",
                       *self.notes],
            ),
        ])

    def to_text(self, max_modules: int | None = None) -> str:
        """Plain-text report: headline figures, breakdown at the peak, module peaks."""
        return self._render(Format.TEXT, max_modules)

    def to_markdown(self, max_modules: int | None = None) -> str:
        """Markdown report with the same content as :meth:`to_text`."""
        return self._render(Format.MARKDOWN, max_modules)

    def plot(self, path: str | Path | None = None) -> Any:
        """The timeline of live bytes by category with the phases marked (see rendering.plots).

        Args:
            path: write a PNG there if given.

        Returns:
            The matplotlib Figure.

        Raises:
            ValueError: if the profile has no timeline.
        """
        if self.timeline is None:
            raise ValueError("this profile has no timeline to plot")
        return plot_step_timeline(
            self.timeline, path, peak_bytes=self.peak_bytes, mode=self.mode,
            title=f"{self.model}, batch {self.batch_size}, {self.device}, {self.optimizer}: "
                  f"live bytes over one step ({self.mode})")


def _fmt(v: int | None) -> str:
    return "" if v is None else format_bytes(v, "MiB")


def _fmt_any(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return format_bytes(int(v), "MiB")
