"""ViT against Rev-ViT: the rows of the depth sweep and the summary of the twin timing (computations only).

Two measurements, both side by side in one run (:mod:`memprof.api.transformers` runs them):

- the depth sweep: the activation peak (NOTE [ The activation peak, defined once ] in
  :mod:`memprof.aggregation.step`) of one training step of ``vit`` and ``revvit`` at each depth,
  estimated under FakeTensorMode (deterministic, nothing allocated; it equals the measured
  tensor-owned bytes, see ``reports/memory.json``'s note), with the ratio Rev-ViT / ViT
  (:func:`depth_row`);
- the twin timing: the CPU time of one training step of ``vit``, ``revvit`` and ``revvit``
  with ``reversible=False`` (its plain-autograd twin, the same weights), interleaved round by
  round on one intra-op thread; reported as ratios, fastest over fastest, and the range of the
  within-round ratios (:func:`twin_timing`).

``reports/transformers.md`` and ``.png`` (``memprof report transformers``) and the transformer
section of ``reports/memory.md`` are rendered from these (:mod:`memprof.rendering.transformers`);
``benchmarks/revvit_depth.py`` prints the same tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .step import StepProfileData

__all__ = [
    "ACTIVATION_TARGET",
    "DEPTHS",
    "REPORT_BATCH_SIZE",
    "TIME_TARGET",
    "TIMING_BATCH_SIZE",
    "TIMING_REPEATS",
    "TWIN",
    "depth_row",
    "twin_timing",
]

#: Depths of the sweep (blocks of the ViT, couplings of the Rev-ViT).
DEPTHS: tuple[int, ...] = (6, 12, 24, 48)
REPORT_BATCH_SIZE = 128
#: Issue 15's targets at depth 12, batch 128: Rev-ViT's activation peak over ViT's, and its step
#: time over its reversible=False twin's.
ACTIVATION_TARGET = 0.20
TIME_TARGET = 1.35
TIMING_REPEATS = 3
#: Batch of the timed steps in the report: 32, since a batch-128 ViT step takes minutes on a
#: busy 2-core machine; the ratio is of the same arithmetic either way.
TIMING_BATCH_SIZE = 32
#: The name of Rev-ViT's plain-autograd twin in the timing.
TWIN = "revvit (reversible=False)"


def depth_row(depth: int, vit: StepProfileData, revvit: StepProfileData, params: int | None = None) -> dict[str, Any]:
    """One row of the depth sweep from the two models' step profiles at ``depth``.

    Args:
        params: the parameters of each model (the twins have the same), counted by the caller.

    Returns:
        ``depth``, ``params``, ``vit_activation_bytes``, ``revvit_activation_bytes``,
        ``vit_peak_bytes``, ``revvit_peak_bytes``, ``activation_ratio`` (Rev-ViT / ViT).
    """
    return {
        "depth": depth,
        "params": params,
        "vit_activation_bytes": vit.activation_peak_bytes,
        "revvit_activation_bytes": revvit.activation_peak_bytes,
        "vit_peak_bytes": vit.peak_bytes,
        "revvit_peak_bytes": revvit.peak_bytes,
        "activation_ratio": revvit.activation_peak_bytes / vit.activation_peak_bytes,
    }


def twin_timing(times: Mapping[str, Sequence[float]], depth: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """The ratios of the twin timing (NOTE [ Step times side by side ] in :mod:`memprof.recording.runner`).

    Args:
        times: ``vit``, ``revvit`` and :data:`TWIN` -> seconds per round, the rounds interleaved.
        depth, batch_size, repeats: the settings, passed through.

    Returns:
        ``{"times": {name: [seconds per round]}, "ratio": fastest revvit / fastest twin,
        "ratio_range": (min, max) of the within-round ratios, "vit_ratio": fastest revvit /
        fastest vit, "depth", "batch_size", "repeats"}``.
    """
    rev, twin = list(times["revvit"]), list(times[TWIN])
    within = [a / b for a, b in zip(rev, twin)]
    return {"times": {n: list(t) for n, t in times.items()}, "ratio": min(rev) / min(twin),
            "ratio_range": (min(within), max(within)), "vit_ratio": min(rev) / min(times["vit"]),
            "depth": depth, "batch_size": batch_size, "repeats": repeats}
