"""Activation checkpointing applied to a plain network: per stage, or every sqrt(n) layers.

The memory-saving strategies of ``memprof compare`` that keep the architecture and trade
compute for memory: the network is cut into segments and each segment but the last runs under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, which keeps only the segment's
input and recomputes the rest during backward. The parameters are the model's own (the
wrapper holds the same modules), so the parameter count and the outputs do not change.

- :func:`checkpoint_stages`: one segment per stage (the layers up to and including each
  max-pool), the classifier head last: 5 checkpointed segments for VGG-19. For a ViT a stage
  is one transformer block ("checkpoint per block"): the patch embedding and block 1, then
  each further block, the head last.
- :func:`checkpoint_sqrt`: ``ceil(sqrt(n))`` segments of about ``sqrt(n)`` units each (n
  units), the classic O(sqrt(n)) memory schedule of Chen et al. 2016, "Training Deep Nets with
  Sublinear Memory Cost" (what ``torch.utils.checkpoint.checkpoint_sequential`` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .vgg import VGG
from .vit import PatchEmbed, TokenHead, ViT, ViTBlock

__all__ = [
    "CheckpointedSequential",
    "SaveOnCpu",
    "checkpoint_sqrt",
    "checkpoint_stages",
    "flatten_layers",
    "group_units",
]

# NOTE [ Units: a layer and the in-place activation that overwrites it ]
# A segment must never start with an in-place op (ReLU(inplace=True)): its input is the
# checkpoint's saved input, and overwriting it in place during forward would hand the
# recomputation a modified tensor (autograd's version check refuses it). Layers are therefore
# grouped into units first, a unit ending after a ReLU, a pooling layer or a flatten, so
# conv + BN + ReLU is one unit, and segments are cut only between units.

# NOTE [ BatchNorm statistics under checkpointing ]
# The recomputation in backward runs each checkpointed BatchNorm a second time in training mode:
# its output and gradients are those of the first pass (the same batch statistics), but its
# running mean and variance are updated twice per step (momentum applied twice). This is
# torch.utils.checkpoint's documented behaviour; it changes evaluation-mode statistics a
# little, never the training step's gradients. The reversible models have the same issue and
# solve it in their engine; here it is left as PyTorch does it, since the comparison is about
# memory and time.


def flatten_layers(model: nn.Module) -> list[nn.Module]:
    """The model's layers in execution order, for a model that is a chain of layers.

    Args:
        model: a :class:`memprof.models.VGG` (``features`` layers, a flatten, ``classifier``
            layers), a :class:`memprof.models.ViT` (patch embedding, blocks, head) or any
            ``nn.Sequential`` (its children, recursively for nested Sequentials).

    Returns:
        The layers, sharing the model's modules (and so its parameters).

    Raises:
        TypeError: for another kind of model, whose forward is not a plain chain.
    """
    if isinstance(model, VGG):
        return [*flatten_layers(model.features), nn.Flatten(1), *flatten_layers(model.classifier)]
    if isinstance(model, ViT):
        return [model.patch_embed, *model.blocks, model.head]
    if type(model) is nn.Sequential:  # subclasses (RevVGG) may hold reversible sequences: kept whole
        out: list[nn.Module] = []
        for child in model:
            out.extend(flatten_layers(child) if type(child) is nn.Sequential else [child])
        return out
    if isinstance(model, nn.Sequential):
        return list(model)
    raise TypeError(f"cannot cut a {type(model).__name__} into layers; expected VGG, ViT or nn.Sequential")


def group_units(layers: Sequence[nn.Module]) -> list[list[nn.Module]]:
    """Group layers into units that end after an activation, a pooling layer or a flatten.

    See NOTE [ Units: a layer and the in-place activation that overwrites it ].
    """
    # A ViT's patch embedding, blocks and head are units of their own (they do nothing in place).
    ends = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
            PatchEmbed, ViTBlock, TokenHead)
    units: list[list[nn.Module]] = [[]]
    for layer in layers:
        units[-1].append(layer)
        if isinstance(layer, ends):
            units.append([])
    return [u for u in units if u]


class CheckpointedSequential(nn.Module):
    """Run ``segments`` in order; all but the last under non-reentrant activation checkpointing.

    The last segment is not checkpointed: its recomputation would start right away in backward
    and save nothing (``checkpoint_sequential`` does the same).

    Args:
        segments: the segments (each an ``nn.Sequential``), in execution order.
        preserve_rng_state: passed to ``torch.utils.checkpoint.checkpoint`` (default True, so a
            segment with dropout recomputes with the same mask).
    """

    def __init__(self, segments: Sequence[nn.Sequential], preserve_rng_state: bool = True) -> None:
        super().__init__()
        if not segments:
            raise ValueError("need at least one segment")
        self.segments = nn.ModuleList(segments)
        self.preserve_rng_state = preserve_rng_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.segments) - 1
        for i, seg in enumerate(self.segments):
            if i < last and torch.is_grad_enabled():
                x = checkpoint(seg, x, use_reentrant=False, preserve_rng_state=self.preserve_rng_state)
            else:
                x = seg(x)
        return x

    def extra_repr(self) -> str:
        sizes = [len(s) for s in self.segments]
        return f"segments={len(sizes)} (layers {sizes}), last not checkpointed"


def checkpoint_stages(model: nn.Module) -> CheckpointedSequential:
    """Checkpoint every stage: a segment ends after each max-pool (or transformer block).

    The rest (VGG's classifier, a ViT's head) is the last, not checkpointed, segment.

    Args:
        model: a VGG, ViT or ``nn.Sequential`` (see :func:`flatten_layers`).

    Returns:
        The wrapper, sharing the model's parameters.

    Raises:
        TypeError: for a model that is not a chain of layers.
    """
    segments: list[list[nn.Module]] = [[]]
    for unit in group_units(flatten_layers(model)):
        segments[-1].extend(unit)
        if isinstance(unit[-1], (nn.MaxPool2d, nn.AvgPool2d, ViTBlock)):
            segments.append([])
    return CheckpointedSequential([nn.Sequential(*s) for s in segments if s])


def checkpoint_sqrt(model: nn.Module) -> CheckpointedSequential:
    """Checkpoint every ``sqrt(n)`` units: ``ceil(sqrt(n))`` segments of near-equal length.

    Args:
        model: a VGG, ViT or ``nn.Sequential`` (see :func:`flatten_layers`); n counts its
            units (:func:`group_units`: 25 for VGG-19, hence 5 segments of 5 units; 14 for
            the 12-block ViT, hence 4 segments of 3-4 units).

    Returns:
        The wrapper, sharing the model's parameters.

    Raises:
        TypeError: for a model that is not a chain of layers.
    """
    units = group_units(flatten_layers(model))
    k = max(1, math.ceil(math.sqrt(len(units))))
    bounds = [round(i * len(units) / k) for i in range(k + 1)]
    segments = [
        nn.Sequential(*[layer for unit in units[a:b] for layer in unit]) for a, b in zip(bounds, bounds[1:])
    ]
    return CheckpointedSequential([s for s in segments if len(s)])


class SaveOnCpu(nn.Module):
    """Run ``module`` with its saved tensors offloaded to host memory (``save_on_cpu``).

    Every tensor autograd saves in the forward is copied to (pinned, with ``pin_memory=True``)
    CPU memory and copied back when backward needs it: GPU memory is traded for host memory and
    PCIe transfers. Only meaningful with the model on a GPU.

    Args:
        module: the wrapped model (its parameters are shared, not copied).
        pin_memory: pin the host copies (faster, asynchronous copies back).
    """

    def __init__(self, module: nn.Module, pin_memory: bool = True) -> None:
        super().__init__()
        self.module = module
        self.pin_memory = pin_memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autograd.graph.save_on_cpu(pin_memory=self.pin_memory):
            return self.module(x)
