"""A sweep's rows: four memory figures per (model, batch size) and the savings against the first model.

For each model and batch size a sweep records four figures side by side:

- ``seed_activation_bytes``: the deck's convention (output elements of conv, batch-norm,
  pooling and linear layers per sample, times the batch and the element size), from the
  per-layer table's totals;
- ``saved_bytes``: the bytes autograd really saves in a forward (the same table, recorded on
  the meta device: exact storage sizes, no arithmetic);
- ``peak_bytes`` and ``activation_peak_bytes``: a steady-state training step's peak and its
  activation peak (NOTE [ The activation peak, defined once ]), estimated or measured;

and the saving of each figure against the first model at the same batch size, in percent.
Running the tables and steps is :func:`memprof.api.sweep.sweep`'s job; this module only computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..vocabulary import Mode

if TYPE_CHECKING:
    from .layer_table import Totals
    from .step import StepProfileData

__all__ = [
    "FIGURES",
    "STATUS_OK",
    "STATUS_OOM",
    "STATUS_SKIPPED",
    "SweepData",
    "add_savings",
    "empty_row",
    "row_figures",
    "saving",
]

#: The figures of a row, each also given as a saving against the first model.
FIGURES: tuple[str, ...] = ("seed_activation_bytes", "saved_bytes", "activation_peak_bytes", "peak_bytes")

#: Status of a row.
STATUS_OK = "ok"
STATUS_OOM = "out of memory"
STATUS_SKIPPED = "skipped: a smaller batch ran out of memory"


@dataclass
class SweepData:
    """Rows of a sweep: one per (model, batch size), in the order run.

    Attributes:
        rows: dicts with ``model``, ``batch_size``, ``status``, the :data:`FIGURES` (bytes,
            None where the step did not run) and ``<figure>_saving_pct`` against the first model.
        models, batch_sizes: what was swept; the first model is the savings' reference.
        mode: ``estimated`` or ``measured``; device, dtype, optimizer: of the training steps.
        notes: extra lines for the rendered outputs.
    """

    rows: list[dict[str, Any]]
    models: list[str]
    batch_sizes: list[int]
    mode: Mode
    device: str
    dtype: str
    optimizer: str
    notes: list[str] = field(default_factory=list)

    @property
    def reference(self) -> str:
        """The model the savings are computed against (the first)."""
        return self.models[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure: settings and rows (the rendered notes are added by the result)."""
        return {
            "models": list(self.models), "batch_sizes": list(self.batch_sizes), "mode": self.mode,
            "device": self.device, "dtype": self.dtype, "optimizer": self.optimizer,
            "reference": self.reference,
            "rows": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in self.rows],
        }


def empty_row(model: str, batch_size: int, status: str = STATUS_OK) -> dict[str, Any]:
    """A row with its figures not yet known (None)."""
    row: dict[str, Any] = {"model": model, "batch_size": batch_size, "status": status}
    row.update({f: None for f in FIGURES})
    return row


def row_figures(totals: Totals, profile: StepProfileData) -> dict[str, int]:
    """The four figures of a row, from the per-layer table's totals and the step's profile."""
    return {
        "seed_activation_bytes": totals.activation_bytes,
        "saved_bytes": totals.saved_bytes,
        "activation_peak_bytes": profile.activation_peak_bytes,
        "peak_bytes": profile.peak_bytes,
    }


def saving(value: int | None, ref: int | None) -> float | None:
    """``100 * (1 - value / ref)``: the saving of ``value`` against ``ref`` in percent (None if unknown)."""
    if value is None or ref is None or ref == 0:
        return None
    return 100.0 * (1.0 - value / ref)


def add_savings(rows: Sequence[dict[str, Any]], reference: str) -> None:
    """Set every row's ``<figure>_saving_pct`` against ``reference``'s row at the same batch size."""
    ref = {r["batch_size"]: r for r in rows if r["model"] == reference}
    for r in rows:
        for f in FIGURES:
            r[f"{f}_saving_pct"] = None if r["model"] == reference else saving(r[f], ref[r["batch_size"]][f])
