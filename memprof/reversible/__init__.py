"""The reversible engine: couplings, invertible downsampling and reversible sequences.

Four small layers: pure coupling functions (:func:`additive_coupling` and its inverse), a
private ``torch.autograd.Function`` that rebuilds activations in backward, public invertible
modules with ``forward`` and ``inverse`` (:class:`AdditiveCoupling`, :class:`AffineCoupling`,
the downsampling blocks), and the :class:`ReversibleSequence` container; plus
:func:`check_invertible` for user-written blocks.
"""

from __future__ import annotations

from torch import nn

from .base import InvertibleModule, ReverseStep, is_invertible
from .check import InvertibilityReport, check_invertible
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
    additive_coupling,
    additive_coupling_inverse,
    affine_scale,
)
from .downsample import ChannelZeroPad, Invertible1x1Conv, InvertibleDownsample
from .sequence import ReversibleSequence

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "ChannelZeroPad",
    "InvertibilityReport",
    "Invertible1x1Conv",
    "InvertibleDownsample",
    "InvertibleModule",
    "ReverseStep",
    "ReversibleSequence",
    "additive_coupling",
    "additive_coupling_inverse",
    "affine_scale",
    "check_invertible",
    "is_invertible",
    "set_reversible",
]


def set_reversible(module: nn.Module, reversible: bool) -> nn.Module:
    """Switch every ReversibleSequence inside ``module`` to ``reversible`` and return ``module``."""
    for m in module.modules():
        if isinstance(m, ReversibleSequence):
            m.reversible = reversible
    return module

