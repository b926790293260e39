"""The reversible engine: couplings, invertible downsampling and reversible sequences.

Four small layers: pure coupling functions (:func:`additive_coupling` and its inverse), a
private ``torch.autograd.Function`` that rebuilds activations in backward, public invertible
modules with ``forward`` and ``inverse``, and the :class:`ReversibleSequence` container.
"""

from __future__ import annotations

from torch import nn

from .base import InvertibleModule, is_invertible
from .coupling import AdditiveCoupling, additive_coupling, additive_coupling_inverse
from .downsample import ChannelZeroPad, Invertible1x1Conv, InvertibleDownsample
from .sequence import ReversibleSequence

__all__ = [
    "AdditiveCoupling",
    "ChannelZeroPad",
    "Invertible1x1Conv",
    "InvertibleDownsample",
    "InvertibleModule",
    "ReversibleSequence",
    "additive_coupling",
    "additive_coupling_inverse",
    "is_invertible",
    "set_reversible",
]


def set_reversible(module: nn.Module, reversible: bool) -> nn.Module:
    """Switch every ReversibleSequence inside ``module`` to ``reversible`` and return ``module``."""
    for m in module.modules():
        if isinstance(m, ReversibleSequence):
            m.reversible = reversible
    return module

