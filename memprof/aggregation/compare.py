"""Memory-saving strategies per model family: the registry, and the comparison's rows from profiles and times.

The strategies a user could pick to train VGG-19 (the deck's network, family ``vgg``) in less memory:

==================  ==========================================================================
plain               VGG-19 under ordinary autograd: the reference of every ratio.
checkpoint-stages   VGG-19, each stage (up to its max-pool) under torch.utils.checkpoint.
checkpoint-sqrt     VGG-19 cut into ceil(sqrt(n)) segments of sqrt(n) units, each checkpointed.
reversible          the deck's Rev-VGG (``revvgg``): reversible couplings inside each stage.
invertible          i-Rev-VGG (``irevvgg``): invertible from the input to the head.
offload             VGG-19 under torch.autograd.graph.save_on_cpu (GPU only, measured only).
==================  ==========================================================================

:func:`comparison_rows` turns each strategy's step profile, parameter count and step times into
one row with its ratios to plain's figures.

Family ``vit`` (:data:`VIT_STRATEGIES`) has the same strategies for the transformers: ``vit``
plain, checkpointed per block and every sqrt(n) units, and its reversible twin ``revvit``. Checkpointing keeps VGG-19's weights and parameter
count, the reversible models change the architecture: the rows keep every axis. Profiling and
timing are :func:`memprof.api.compare.compare_strategies`'s job; this module only computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..validation import check_choice
from ..vocabulary import Mode, Strategy

if TYPE_CHECKING:
    from .step import StepProfileData

__all__ = [
    "FAMILIES",
    "FAMILY_TITLES",
    "STRATEGIES",
    "VIT_STRATEGIES",
    "ComparisonData",
    "Strategy",
    "StrategyInfo",
    "activation_peak",
    "comparison_notes",
    "comparison_rows",
    "default_strategies",
    "family_strategies",
    "list_strategies",
]


@dataclass(frozen=True)
class StrategyInfo:
    """What a strategy is: its model, how it saves memory, and what it needs."""

    strategy: Strategy
    model: str
    description: str
    family: str  # "reference", "checkpointing", "reversible" or "offloading"
    needs_cuda: bool = False


STRATEGIES: dict[str, StrategyInfo] = {
    s.strategy.value: s
    for s in (
        StrategyInfo(Strategy.PLAIN, "vgg19", "VGG-19, ordinary autograd", "reference"),
        StrategyInfo(Strategy.CHECKPOINT_STAGES, "vgg19",
                     "VGG-19, torch.utils.checkpoint per stage (5 segments + head)", "checkpointing"),
        StrategyInfo(Strategy.CHECKPOINT_SQRT, "vgg19",
                     "VGG-19, torch.utils.checkpoint every sqrt(n) layers (5 segments of 5 units)",
                     "checkpointing"),
        StrategyInfo(Strategy.REVERSIBLE, "revvgg", "Rev-VGG, reversible couplings in each stage", "reversible"),
        StrategyInfo(Strategy.INVERTIBLE, "irevvgg", "i-Rev-VGG, invertible from input to head", "reversible"),
        StrategyInfo(Strategy.OFFLOAD, "vgg19",
                     "VGG-19, saved tensors offloaded to pinned host memory (save_on_cpu)", "offloading",
                     needs_cuda=True),
    )
}


#: The same strategies for the transformers: ``vit`` and its reversible twin ``revvit``.
VIT_STRATEGIES: dict[str, StrategyInfo] = {
    s.strategy.value: s
    for s in (
        StrategyInfo(Strategy.PLAIN, "vit", "ViT (192 wide, 12 blocks), ordinary autograd", "reference"),
        StrategyInfo(Strategy.CHECKPOINT_STAGES, "vit",
                     "ViT, torch.utils.checkpoint per transformer block (12 segments + head)", "checkpointing"),
        StrategyInfo(Strategy.CHECKPOINT_SQRT, "vit",
                     "ViT, torch.utils.checkpoint every sqrt(n) units (4 segments of 3-4 units)", "checkpointing"),
        StrategyInfo(Strategy.REVERSIBLE, "revvit", "Rev-ViT, the blocks as reversible couplings on two streams",
                     "reversible"),
        StrategyInfo(Strategy.OFFLOAD, "vit",
                     "ViT, saved tensors offloaded to pinned host memory (save_on_cpu)", "offloading",
                     needs_cuda=True),
    )
}

#: Model family -> its strategies (``memprof compare --family``); the first is the default.
FAMILIES: dict[str, dict[str, StrategyInfo]] = {"vgg": STRATEGIES, "vit": VIT_STRATEGIES}
#: What each family's title calls its reference model.
FAMILY_TITLES: dict[str, str] = {"vgg": "VGG-19", "vit": "ViT"}


def family_strategies(family: str = "vgg") -> dict[str, StrategyInfo]:
    """The strategies of a model family.

    Raises:
        UsageError: for an unknown family, listing the known ones.
    """
    return FAMILIES[check_choice("family", family, FAMILIES)]


def list_strategies(family: str = "vgg") -> list[str]:
    """The strategy names of ``family``, in display order."""
    return list(family_strategies(family))


def default_strategies(mode: str = Mode.ESTIMATED, device: str | torch.device = "cpu",
                       family: str = "vgg") -> list[str]:
    """Every strategy of ``family`` that can run with this mode and device (offload: measured on CUDA only)."""
    dev = torch.device(device)
    return [s for s, info in family_strategies(family).items()
            if not info.needs_cuda or (dev.type == "cuda" and mode == Mode.MEASURED)]


@dataclass
class ComparisonData:
    """One row per strategy: memory (estimated or measured), step time ratio, parameters.

    Attributes:
        rows: dicts with ``strategy``, ``model``, ``description``, ``params``,
            ``activation_peak_bytes``, ``peak_bytes``, their ratios to plain
            (``activation_ratio``, ``peak_ratio``), ``step_time_s`` (fastest round, measured;
            None without timing), ``time_ratio`` (fastest over plain's fastest) and
            ``time_ratio_min``/``time_ratio_max`` (range of the within-round ratios).
        batch_size, mode, device, dtype, optimizer, repeats: the settings.
        notes: extra lines for the rendered outputs.
        profiles: strategy -> its step profile.
        family: the model family (``vgg`` or ``vit``, :data:`FAMILIES`).
    """

    rows: list[dict[str, Any]]
    batch_size: int
    mode: Mode
    device: str
    dtype: str
    optimizer: str
    repeats: int
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, StepProfileData] = field(default_factory=dict, repr=False)
    family: str = "vgg"

    @property
    def strategies(self) -> dict[str, StrategyInfo]:
        """The family's strategy table."""
        return family_strategies(self.family)


# NOTE [ The activation peak of offloading ]
# save_on_cpu copies every saved tensor into host memory. The storage tracker sees every
# storage, host copies included, so its activation peak would count what offloading moved
# off the GPU. For the offload strategy (measured on CUDA only) the activation peak is
# therefore the GPU allocator's step peak minus the parameters, gradients and optimizer state
# live at that peak: the device bytes that are neither model nor optimizer state.
def activation_peak(strategy: str, prof: StepProfileData) -> int:
    """The activation peak of a strategy's step (NOTE [ The activation peak of offloading ])."""
    if Strategy(strategy) is not Strategy.OFFLOAD:
        return prof.activation_peak_bytes
    state = sum(prof.at_peak.get(c, 0) for c in ("parameters", "gradients", "optimizer_state"))
    return prof.peak_bytes - state


def comparison_rows(
    strategies: Sequence[str],
    profiles: Mapping[str, StepProfileData],
    params: Mapping[str, int],
    times: Mapping[str, Sequence[float]],
    failures: Mapping[str, str] | None = None,
    family: str = "vgg",
) -> list[dict[str, Any]]:
    """One row per strategy with its ratios to plain's (NOTE [ Step times side by side ]).

    Args:
        strategies: the names, plain among them.
        profiles: each strategy's step profile (missing for a strategy in ``failures``).
        params: each strategy's parameter count.
        times: each strategy's step time per round (empty without timing).
        failures: strategy -> status of a step that did not run, e.g. "out of memory at batch
            N: needed X more" (its figures stay empty, NOTE [ Out of memory is a result ]).
        family: the strategies' model family (:data:`FAMILIES`).

    Returns:
        The rows of :class:`ComparisonData`.
    """
    table = family_strategies(family)
    ref = Strategy.PLAIN.value
    if ref not in times:  # plain did not run (out of memory): no time ratios to give
        times = {}
    best = {n: min(t) for n, t in times.items()}
    ratios = {n: [a / b for a, b in zip(t, times[ref])] for n, t in times.items()}
    rows = []
    failures = failures or {}
    for name in strategies:
        prof = profiles.get(name)
        rows.append({
            "strategy": name,
            "status": failures.get(name, "ok"),
            "model": table[name].model,
            "params": params[name],
            "activation_peak_bytes": activation_peak(name, prof) if prof is not None else None,
            "peak_bytes": prof.peak_bytes if prof is not None else None,
            "activation_ratio": None,
            "peak_ratio": None,
            "time_ratio": round(best[name] / best[ref], 4) if name in best else None,
            "time_ratio_min": round(min(ratios[name]), 4) if name in ratios else None,
            "time_ratio_max": round(max(ratios[name]), 4) if name in ratios else None,
            "step_time_s": best.get(name),
            "description": table[name].description,
        })
    plain = next(r for r in rows if r["strategy"] == ref)
    for r in rows:
        for figure, ratio in (("activation_peak_bytes", "activation_ratio"), ("peak_bytes", "peak_ratio")):
            if r[figure] is not None and plain[figure]:
                r[ratio] = round(r[figure] / plain[figure], 4)
    return rows


def comparison_notes(strategies: Sequence[str], family: str = "vgg") -> list[str]:
    """Notes that depend on which strategies ran (offloading's activation peak, or its absence)."""
    table = family_strategies(family)
    notes = []
    if any(table[s].strategy is Strategy.OFFLOAD for s in strategies):
        notes.append("offload: activation peak = GPU step peak minus parameters, gradients and optimizer state "
                     "(NOTE [ The activation peak of offloading ]); host memory is not counted.")
    if not any(table[s].needs_cuda for s in strategies):
        notes.append("offload (save_on_cpu) is not shown: it needs --measure on a CUDA device.")
    return notes
