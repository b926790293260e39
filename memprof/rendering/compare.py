"""The strategy comparison as a table (text, Markdown, CSV, JSON), a DataFrame and a scatter plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..aggregation.compare import FAMILY_TITLES, ComparisonData
from ..units import format_bytes, format_count
from ..vocabulary import Format, Mode
from .plots import plot_strategies
from .result import Result
from .tables import render_csv, render_json, render_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["StrategyComparison"]


class StrategyComparison(ComparisonData, Result):
    """One row per strategy (:class:`~memprof.aggregation.compare.ComparisonData`), renderable and plottable."""

    @property
    def kind(self) -> str:
        """``estimated`` or ``measured``: the label of the memory figures."""
        return str(self.mode)

    @property
    def title(self) -> str:
        """One line naming the settings."""
        return (f"memprof compare: {FAMILY_TITLES[self.family]} memory-saving strategies at batch {self.batch_size} "
                f"({self.kind} memory, {self.device}, {self.dtype}, {self.optimizer})")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per strategy; bytes and parameters as integers, ratios as floats."""
        import pandas as pd

        cols = ["strategy", "model", "params", "activation_peak_bytes", "peak_bytes", "activation_ratio",
                "peak_ratio", "time_ratio", "time_ratio_min", "time_ratio_max", "step_time_s", "description", "status"]
        df = pd.DataFrame(self.rows, columns=cols)
        df["status"] = df["status"].fillna("ok")
        for c in ("activation_peak_bytes", "peak_bytes"):
            df[c] = df[c].astype("Int64")
        for c in ("time_ratio", "time_ratio_min", "time_ratio_max", "step_time_s"):
            df[c] = df[c].astype("float64")
        return df

    def to_csv(self, comment: str | None = None) -> str:
        """CSV of :meth:`to_dataframe`."""
        return render_csv(self.to_dataframe(), comment=comment)

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure: settings, rows, notes."""
        return {"family": self.family, "batch_size": self.batch_size, "mode": self.mode, "device": self.device, "dtype": self.dtype,
                "optimizer": self.optimizer, "repeats": self.repeats, "rows": self.rows,
                "notes": self.notes_text()}

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return render_json(self.to_dict())

    def findings(self) -> list[str]:
        """Where each checkpointing strategy beats each reversible one, and the reverse, axis by axis.

        NOTE [ An honest comparison ]: the reversible models change the architecture (and the
        parameter count); checkpointing keeps VGG-19 and pays in recomputation. Neither wins on
        every axis, and these lines say which wins where, from this run's numbers.
        """
        by = {r["strategy"]: r for r in self.rows}
        axes = [("activation peak", "activation_peak_bytes", lambda v: format_bytes(v, "MiB")),
                ("step peak", "peak_bytes", lambda v: format_bytes(v, "MiB")),
                ("step time", "time_ratio", lambda v: f"{v:.2f}x plain"),
                ("parameters", "params", lambda v: f"{v:,}")]
        lines = []
        ckpts = [s for s in by if self.strategies[s].family == "checkpointing"]
        revs = [s for s in by if self.strategies[s].family == "reversible"]
        for c in ckpts:
            for r in revs:
                wins, losses = [], []
                for label, key, fmt in axes:
                    a, b = by[c][key], by[r][key]
                    if a is None or b is None:
                        continue
                    if a < b:
                        wins.append(f"{label} ({fmt(a)} vs {fmt(b)})")
                    elif a > b:
                        losses.append(f"{label} ({fmt(b)} vs {fmt(a)})")
                if wins:
                    lines.append(f"{c} beats {r} on " + ", ".join(wins) + ".")
                if losses:
                    lines.append(f"{r} beats {c} on " + ", ".join(losses) + ".")
        for label, key, fmt in axes:
            vals = [(r[key], r["strategy"]) for r in self.rows if r[key] is not None]
            if vals:
                low = min(v for v, _ in vals)
                names = ", ".join(n for v, n in vals if v == low)
                lines.append(f"Lowest {label}: {names} ({fmt(low)}).")
        return lines

    def notes_text(self) -> list[str]:
        """The lines under the table: definitions, findings and caveats."""
        timed = any(r["time_ratio"] is not None for r in self.rows)
        notes = [
            f"activation peak: live bytes of one steady-state training step other than parameters, "
            f"gradients and optimizer state ({self.kind}"
            + (", tensor-owned bytes under FakeTensorMode" if self.mode == Mode.ESTIMATED else "") + "); "
            "step peak: all live bytes at the step's peak; ratios are to plain's figure.",
        ]
        if timed:
            notes.append(f"step time: measured on {self.device} in {self.repeats} rounds in which every strategy runs "
                         "one step in turn (NOTE [ Step times side by side ]): the fastest step over plain's fastest; "
                         "'range over rounds' spans the ratios to plain's step of the same round (a wide range: a "
                         "noisy machine, rerun with more --repeats). A step is forward, loss, backward and optimizer "
                         "step, after a warm-up step.")
        notes.append("MiB = 2^20 bytes.")
        return notes + self.findings() + self.notes

    def _display(self) -> pd.DataFrame:
        import pandas as pd

        df = self.to_dataframe()
        df = df[["strategy", "params", "activation_peak_bytes", "activation_ratio", "peak_bytes", "peak_ratio",
                 "time_ratio", "time_ratio_min", "time_ratio_max", "description"]].copy()
        df["time_range"] = [
            "" if pd.isna(lo) else f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(df["time_ratio_min"], df["time_ratio_max"])]
        if (self.to_dataframe()["status"] != "ok").any():  # NOTE [ Out of memory is a result ]: say which did not fit
            df["description"] = [d if st == "ok" else st for d, st in zip(df["description"], self.to_dataframe()["status"])]
        return df[["strategy", "params", "activation_peak_bytes", "activation_ratio", "peak_bytes", "peak_ratio",
                   "time_ratio", "time_range", "description"]]

    def _render(self, fmt: Format) -> str:
        import pandas as pd

        def mib(v: Any) -> str:
            return "" if pd.isna(v) else format_bytes(int(v), "MiB")

        def ratio(v: Any) -> str:
            return "" if pd.isna(v) else f"{v:.2f}"

        headers = {"params": "parameters", "activation_peak_bytes": f"activation peak ({self.kind})",
                   "activation_ratio": "/ plain", "peak_bytes": f"step peak ({self.kind})", "peak_ratio": "/ plain ",
                   "time_ratio": "step time / plain (measured)", "time_range": "range over rounds"}
        return render_table(self._display(), fmt, title=self.title, notes=self.notes_text(), headers=headers,
                            formatters={"params": format_count, "activation_peak_bytes": mib, "peak_bytes": mib,
                                        "activation_ratio": ratio, "peak_ratio": ratio, "time_ratio": ratio})

    def plot(self, path: str | Path | None = None) -> Any:
        """Memory against step time, one point per strategy (see rendering.plots.plot_strategies).

        Args:
            path: write a PNG there if given.

        Returns:
            The matplotlib Figure.

        Raises:
            ValueError: if the comparison ran without timing.
        """
        return plot_strategies(self.to_dataframe(), path, title=self.title)
