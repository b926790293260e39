"""Live bytes per category over one step (the storage tracker's output), and the activation peak.

Plain data: aggregation reads a :class:`Timeline` without importing the tracker that filled it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..vocabulary import STATE_CATEGORIES, TRACKED_CATEGORIES

__all__ = ["Timeline", "activation_bytes"]


# NOTE [ The activation peak, defined once ]
# "Activation peak" is the peak over the step of the live bytes that are NOT model or optimizer
# state: live bytes minus parameters, gradients and optimizer state. It therefore counts saved
# activations, in-flight temporaries and the input batch, because all of them grow with the
# batch size and none of them persists across steps. It is computed on the attribution timeline
# (tensor-owned bytes), so an estimate and a measurement give the same figure; the
# unattributed gap is reported separately at the total peak. Every figure that says
# "activation peak" (profile, fit, reports) calls activation_bytes() below.
def activation_bytes(by_category: dict[str, Any]) -> Any:
    """Live bytes other than parameters, gradients and optimizer state (scalars or arrays).

    Args:
        by_category: live bytes keyed by category name (tracked categories; ``unattributed``
            is ignored: see NOTE [ The activation peak, defined once ]).

    Returns:
        The bytes that count towards the activation peak, of the same kind as the values.
    """
    total = sum(by_category[c.value] for c in TRACKED_CATEGORIES)
    return total - sum(by_category[c.value] for c in STATE_CATEGORIES)


@dataclass
class Timeline:
    """Live bytes per category after every event of the step (the event clock is the x axis)."""

    by_category: dict[str, np.ndarray]
    phases: list[tuple[str, int, int]] = field(default_factory=list)  # (phase, start, end)

    @property
    def total(self) -> np.ndarray:
        """Tensor-owned live bytes after each event."""
        return sum(self.by_category[c.value] for c in TRACKED_CATEGORIES)  # type: ignore[return-value]

    @property
    def activations(self) -> np.ndarray:
        """Live bytes counted by the activation peak, after each event."""
        return activation_bytes(self.by_category)

    def at(self, index: int) -> dict[str, int]:
        """Bytes per category after event ``index``."""
        return {c.value: int(self.by_category[c.value][index]) for c in TRACKED_CATEGORIES}
