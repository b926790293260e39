"""The answer of ``memprof fit``: the largest batch size that fits a budget, as text or JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..units import format_bytes
from ..vocabulary import Format
from .result import Result
from .step import StepProfile
from .tables import render_csv

__all__ = ["BatchFit"]


@dataclass
class BatchFit(Result):
    """What :func:`memprof.fit_batch_size` found for one model and budget.

    Attributes:
        model: the model's display name.
        memory_bytes: the budget.
        device, dtype, optimizer: the estimated step's settings.
        batch_size: the largest batch that fits (0: not even 1).
        profile: the estimate at that batch (None when nothing fits).
        smallest_batch_size: where the search started: the smallest batch the model accepts.
        smallest_peak_bytes: the estimated peak at ``smallest_batch_size`` (what not fitting needs).
        rejected: why the model rejected the batch sizes below ``smallest_batch_size`` ("" if none).
        max_batch_size: the search's cap; ``capped``: the cap itself fits (a larger batch may too).
    """

    model: str
    memory_bytes: int
    device: str
    dtype: str
    optimizer: str
    batch_size: int
    profile: StepProfile | None
    smallest_batch_size: int = 1
    smallest_peak_bytes: int | None = None
    rejected: str = ""
    max_batch_size: int | None = None
    capped: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure: settings, the batch size and its estimated peaks (bytes)."""
        return {
            "model": self.model, "memory_bytes": self.memory_bytes, "device": self.device, "dtype": self.dtype,
            "optimizer": self.optimizer, "batch_size": self.batch_size,
            "fitted_figure": self._fitted()[0], "fitted_bytes": self._fitted()[1],
            "unused_bytes": self.memory_bytes - self._fitted()[1] if self.profile else None,
            "peak_bytes": self.profile.peak_bytes if self.profile else None,
            "reserved_peak_bytes": self.profile.reserved_peak_bytes if self.profile else None,
            "activation_peak_bytes": self.profile.activation_peak_bytes if self.profile else None,
            "smallest_batch_size": self.smallest_batch_size, "smallest_peak_bytes": self.smallest_peak_bytes,
            "rejected": self.rejected or None, "max_batch_size": self.max_batch_size, "capped": self.capped,
        }

    def nothing_fits(self) -> str:
        """The sentence for a budget below the smallest batch, with what that batch needs."""
        need = "" if self.smallest_peak_bytes is None else f": batch size {self.smallest_batch_size} needs " \
            f"{format_bytes(self.smallest_peak_bytes)} (estimated)"
        return (f"{self.model}: not even batch size {self.smallest_batch_size} fits in "
                f"{format_bytes(self.memory_bytes)} ({self.memory_bytes} bytes){need}")

    def _fitted(self) -> tuple[str | None, int | None]:
        """The figure held to the budget (memprof.aggregation.fit.fitted_figure)."""
        if self.profile is None:
            return None, None
        from ..aggregation.fit import fitted_figure

        return fitted_figure(self.profile)

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON (ending with a newline)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_dataframe(self) -> Any:
        """One row with the fields of :meth:`to_dict`."""
        import pandas as pd

        return pd.DataFrame([self.to_dict()])

    def to_csv(self) -> str:
        """CSV of :meth:`to_dataframe`."""
        return render_csv(self.to_dataframe())

    def _render(self, fmt: Format) -> str:
        budget = f"{format_bytes(self.memory_bytes)} ({self.memory_bytes} bytes)"
        if self.profile is None:
            lines = [self.nothing_fits()]
        else:
            p = self.profile
            figure, fitted = self._fitted()
            assert fitted is not None
            unused = self.memory_bytes - fitted
            lines = [
                f"{self.model}: batch size {self.batch_size} fits in {budget} on {self.device}, "
                f"{self.dtype}, {self.optimizer}",
                f"fitted figure: {figure} at batch {self.batch_size}: {format_bytes(fitted, 'MiB')}; unused budget "
                f"{format_bytes(unused, 'MiB')} ({100 * unused / self.memory_bytes:.2f}%)",
            ]
            if p.reserved_peak_bytes is not None:
                lines.append(f"predicted max_memory_allocated {format_bytes(p.peak_bytes, 'MiB')}, "
                             f"max_memory_reserved {format_bytes(p.reserved_peak_bytes, 'MiB')}")
            lines += [f"activation peak {format_bytes(p.activation_peak_bytes, 'MiB')}", *(f"note: {n}" for n in p.notes)]
        if self.rejected:
            below = "1" if self.smallest_batch_size == 2 else f"1 to {self.smallest_batch_size - 1}"
            lines.append(f"note: the model rejects batch size {below} ({self.rejected}); the search started at "
                         f"batch size {self.smallest_batch_size}, the smallest it accepts")
        if self.capped:
            lines.append(f"note: the search stopped at its cap, batch size {self.max_batch_size:,}, which still "
                         "fits: a larger batch may fit as well")
        if fmt is Format.MARKDOWN:
            lines = [f"- {line}" for line in lines]
        return "\n".join(lines) + "\n"
