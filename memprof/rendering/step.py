"""One training step's profile as text, Markdown, CSV, JSON, a DataFrame and a timeline plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..aggregation.step import StepProfileData
from ..units import format_bytes, table_unit
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
        unit = self._unit()
        summary = [
            ("model", self.model),
            ("batch size", str(self.batch_size)),
            ("device / dtype / optimizer", f"{self.device} / {self.dtype} / {self.optimizer}"),
            ("mode", self.mode),
        ]
        if self.loss:
            summary.append(("loss", describe_loss(self.loss)))
        summary.append((f"peak ({kind})", format_bytes(self.peak_bytes, unit)))
        if self.reserved_peak_bytes is not None:
            summary.append((f"reserved peak ({kind})", format_bytes(self.reserved_peak_bytes, unit)))
        summary += [
            ("attributed peak (tensor-owned)", format_bytes(self.attributed_peak_bytes, unit)),
            ("activation peak", format_bytes(self.activation_peak_bytes, unit)),
        ]
        for ph, row in self.phases.items():
            summary.append((f"{ph} peak", "" if row["peak_bytes"] is None else format_bytes(row["peak_bytes"], unit)))
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

    def _unit(self) -> str:
        """One unit for every byte figure of the report, scaled to the peak (NOTE in units.table_unit)."""
        return table_unit(self.peak_bytes)

    def select_modules(self, depth: int | None = None, top: int | None = None) -> tuple[list[dict[str, Any]], str]:
        """The module rows a report shows, and a line saying what was left out ("" if nothing).

        Args:
            depth: only modules nested at most this deep (the model is depth 0, its children 1).
            top: only the ``top`` modules with the largest peak (forward or backward), kept in
                model order; None or 0: all.
        """
        rows = [m for m in self.modules if depth is None or _depth(m["name"]) <= depth]
        shown = rows
        if top:
            ranked = sorted(range(len(rows)), key=lambda i: -_module_peak(rows[i]))[:top]
            shown = [rows[i] for i in sorted(ranked)]
        if len(shown) == len(self.modules):
            return shown, ""
        what = f"the {len(shown)} largest by peak of " if top and len(shown) < len(rows) else f"{len(shown)} of "
        where = f" at depth <= {depth}" if depth is not None else ""
        return shown, (f"showing {what}{len(self.modules)} modules{where}; --top N and --depth N choose "
                       "(--top 0: all), --format json lists every module")

    def _render(self, fmt: Format, max_modules: int | None = None, depth: int | None = None,
                top: int | None = None) -> str:
        import pandas as pd

        summary, breakdown, _ = self._frames()
        unit = self._unit()
        rows, left_out = self.select_modules(depth, top if top is not None else max_modules)
        modules = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(self.modules[0]) if self.modules else [])
        cols = ["name", "type", "calls", "forward_peak_bytes", "forward_increase_bytes",
                "backward_peak_bytes", "backward_increase_bytes"]
        cols += [c for c in modules.columns if c.endswith("allocated_peak_bytes")]
        modules = modules.reindex(columns=cols).copy()
        modules["name"] = modules["name"].replace("", "(model)")

        def in_unit(v: Any) -> str:
            if v is None or (isinstance(v, float) and v != v):
                return ""
            return format_bytes(int(v), unit)

        byte_fmt = {c: in_unit for c in cols if c.endswith("_bytes")}
        return render_sections([
            render_table(summary, fmt, title=f"Training step: {self.model}"),
            render_table(
                breakdown, fmt, title="At the peak",
                formatters={"bytes": in_unit, "share": lambda v: f"{v:.1f}%"},
                notes=["unattributed: allocator bytes no tensor owns (kernel workspaces, rounding)"],
            ),
            render_table(
                modules, fmt, title="Per module",
                headers={"forward_peak_bytes": "fwd peak", "forward_increase_bytes": "fwd +",
                         "backward_peak_bytes": "bwd peak", "backward_increase_bytes": "bwd +",
                         "forward_allocated_peak_bytes": "fwd peak (allocator)",
                         "backward_allocated_peak_bytes": "bwd peak (allocator)"},
                formatters=byte_fmt,
                notes=[*([left_out] if left_out else []),
                       "peak: live bytes of the whole step while the module runs; +: above the bytes "
                       "live when it started; backward includes recomputation in reversible blocks",
                       *self.notes],
            ),
        ])

    def to_text(self, max_modules: int | None = None, depth: int | None = None, top: int | None = None) -> str:
        """Plain-text report: headline figures, breakdown at the peak, module peaks (see :meth:`select_modules`)."""
        return self._render(Format.TEXT, max_modules, depth, top)

    def to_markdown(self, max_modules: int | None = None, depth: int | None = None, top: int | None = None) -> str:
        """Markdown report with the same content as :meth:`to_text`."""
        return self._render(Format.MARKDOWN, max_modules, depth, top)

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


def describe_loss(loss: dict[str, str]) -> str:
    """``cross_entropy of output["logits"]`` (NOTE [ Which output the loss is taken of ])."""
    fn, out = loss.get("function", "?"), loss.get("output", "?")
    if fn == "loss_fn":
        return "loss_fn (given) of the whole output"
    where = "the output" if out == "output" else (out if out.startswith("output[") else f'output["{out}"]')
    return f"{fn} of {where}"


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1


def _module_peak(row: dict[str, Any]) -> int:
    return max(int(row.get("forward_peak_bytes") or 0), int(row.get("backward_peak_bytes") or 0))
