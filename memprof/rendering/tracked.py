"""What ``memprof.track()`` recorded, renderable: :class:`TrackRecording`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..units import format_bytes
from ..vocabulary import Format
from .result import Result
from .step import StepProfile
from .tables import render_csv, render_json, render_sections, render_table

__all__ = ["TrackRecording"]


@dataclass
class TrackRecording(Result):
    """What :func:`track` recorded: one :class:`StepProfile` per training step.

    Attributes:
        steps: the steps in order; ``steps[-1]`` is the steady state. Filled when the block
            exits, also when it raised.
        mode: ``fast`` or ``fine``.
        no_optimizer_step: the code never called ``optimizer.step()``; ``steps`` then holds the
            whole block as one step.
        notes: what the recording could not see, in words.
    """

    mode: str
    steps: list[StepProfile] = field(default_factory=list)
    no_optimizer_step: bool = False
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def steady_state(self) -> StepProfile:
        """The last step (the one a training loop repeats).

        Raises:
            ValueError: if no step was recorded.
        """
        if not self.steps:
            raise ValueError("no training step was recorded")
        return self.steps[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``steps`` (each with the keys of ``memprof profile --format json``) and notes."""
        return {
            "mode": self.mode,
            "no_optimizer_step": self.no_optimizer_step,
            "stopped_early": self.stopped_early,
            "notes": list(self.notes),
            "steps": [s.to_dict() for s in self.steps],
        }

    def to_json(self) -> str:
        """JSON with the keys of :meth:`to_dict`, ending with a newline."""
        return render_json(self.to_dict())

    def steps_frame(self) -> Any:
        """One row per step: peak, activation peak, phase peaks, step time (bytes as integers)."""
        import pandas as pd

        rows = []
        for i, s in enumerate(self.steps, 1):
            rows.append({
                "step": i,
                "peak_bytes": s.peak_bytes,
                "activation_peak_bytes": s.activation_peak_bytes,
                **{f"{ph}_peak_bytes": row.get("peak_bytes") for ph, row in s.phases.items()},
                "step_time_s": s.step_time_s,
            })
        return pd.DataFrame(rows)

    def to_dataframe(self) -> Any:
        """One row per step (:meth:`steps_frame`)."""
        return self.steps_frame()

    def to_csv(self) -> str:
        """One row per step as CSV."""
        return render_csv(self.steps_frame())

    def plot(self, path: str | Path | None = None) -> Any:
        """The steady-state step's timeline (:meth:`StepProfile.plot`)."""
        return self.steady_state.plot(path)

    def _render(self, fmt: Format, max_modules: int | None = None) -> str:
        def fmt_bytes(v: Any) -> str:
            return "" if v is None or (isinstance(v, float) and v != v) else format_bytes(int(v), "MiB")

        frame = self.steps_frame()
        fmts = {c: fmt_bytes for c in frame.columns if c.endswith("_bytes")}
        fmts["step_time_s"] = lambda v: "" if v is None or v != v else f"{v:.3f}"
        notes = list(self.notes)
        parts = [render_table(frame, fmt, title=f"Steps recorded ({self.mode} mode)", formatters=fmts,
                              headers={"peak_bytes": "peak (measured)", "activation_peak_bytes": "activation peak",
                                       "forward_peak_bytes": "forward peak", "backward_peak_bytes": "backward peak",
                                       "optimizer_peak_bytes": "optimizer peak", "step_time_s": "time s"},
                              notes=notes)]
        if self.steps:
            head = self.steady_state._render(fmt, max_modules)
            parts.append(head)
        return render_sections(parts)

    def to_text(self, max_modules: int | None = None) -> str:
        """Every step in one table, then the steady-state step's full report."""
        return self._render(Format.TEXT, max_modules)

    def to_markdown(self, max_modules: int | None = None) -> str:
        """As :meth:`to_text`, in Markdown."""
        return self._render(Format.MARKDOWN, max_modules)


