"""Invertible replacements for pooling and channel widening (i-RevNet, Glow)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import InvertibleModule, ParamGrads, ReverseStep


def _tensor(module: nn.Module, x: Any) -> torch.Tensor:
    """x, which must be one tensor (these blocks do not take several streams)."""
    if not isinstance(x, torch.Tensor):
        # ValueError, not TypeError: the sequence names the block for ValueErrors of its blocks
        raise ValueError(f"{type(module).__name__} takes one tensor, got {type(x).__name__}")  # noqa: TRY004
    return x

__all__ = ["ChannelZeroPad", "Invertible1x1Conv", "InvertibleDownsample"]


class InvertibleDownsample(InvertibleModule):
    """Lossless space-to-depth: (B, C, H, W) -> (B, C*f*f, H/f, W/f), as in i-RevNet.

    Every input element lands in exactly one output element, so nothing is lost and the inverse
    (depth-to-space) is exact. Being a permutation, its gradient is the inverse permutation of
    the output gradient: the reversible backward recomputes nothing here.

    Args:
        factor: the spatial reduction f (2 halves height and width and quadruples channels).

    Raises:
        ValueError: for a factor below 2, or (at call time) an input that is not 4-D or whose
            height or width is not divisible by the factor.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
        self.factor = factor

    def _check(self, x: torch.Tensor) -> None:
        _tensor(self, x)
        f = self.factor
        if x.dim() != 4 or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"InvertibleDownsample(factor={f}) needs a (B, C, H, W) input with H and W "
                f"divisible by {f}; got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor, *conditioning: Any, **kw: Any) -> torch.Tensor:
        """Space-to-depth (conditioning arguments of a sequence are ignored)."""
        self._check(x)
        return F.pixel_unshuffle(x, self.factor)  # (B, C*f*f, H/f, W/f)

    def inverse(self, y: torch.Tensor, *conditioning: Any, **kw: Any) -> torch.Tensor:
        return F.pixel_shuffle(_tensor(self, y), self.factor)  # (B, C, H, W)

    def reverse(self, y: Any, grad_y: Any, step: ReverseStep) -> tuple[Any, Any, ParamGrads]:
        return self.inverse(y), self.inverse(grad_y), []

    def reverse_inverse(self, x: Any, grad_x: Any, step: ReverseStep) -> tuple[Any, Any, ParamGrads]:
        # inverse is a permutation too: its adjoint is the forward permutation
        return self.forward(x), self.forward(grad_x), []

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


# NOTE [ Zero channels and BatchNorm under reconstruction ]
# Zero padding is exact in the forward, but backward sees the padded channels rebuilt from the
# outputs of later blocks: zero plus rounding noise. If a coupling's F (or G) reads a half made
# only of padded channels and starts with a BatchNorm, the plain network normalises an all-zero
# input (batch variance 0, output 0) while the reversible one normalises the noise to unit
# variance: the gradients disagree completely. With ``halves=True`` the zeros are split between
# the two halves of the following coupling, so F and G always read real channels and the
# rebuilt zeros only add rounding-size noise to a well-conditioned input. Models should use it
# (or put an invertible channel mixer after the padding).


class ChannelZeroPad(InvertibleModule):
    """Widen channels by adding zero channels (i-RevNet's injective padding).

    (B, C, ...) -> (B, C + pad, ...). The inverse drops the added channels; it is exact on
    everything the forward produces. Couplings that follow may write into the new channels,
    which is how a reversible network grows its width without losing information.

    Args:
        pad: the number of zero channels added (>= 1).
        halves: add ``pad // 2`` zero channels after each half of the input instead of ``pad``
            after all of it, so that both halves of a following coupling carry real channels
            (see NOTE [ Zero channels and BatchNorm under reconstruction ]). Needs an even
            ``pad`` and an even channel count.
    """

    def __init__(self, pad: int, halves: bool = False) -> None:
        super().__init__()
        if not isinstance(pad, int) or pad < 1:
            raise ValueError(f"pad must be a positive integer, got {pad!r}")
        if halves and pad % 2:
            raise ValueError(f"pad must be even with halves=True, got {pad}")
        self.pad = pad
        self.halves = halves

    def forward(self, x: torch.Tensor, *conditioning: Any, **kw: Any) -> torch.Tensor:
        """Add the zero channels (conditioning arguments of a sequence are ignored)."""
        _tensor(self, x)
        if x.dim() < 2 or (self.halves and x.shape[1] % 2):
            need = "an even channel count" if self.halves else "a (B, C, ...) input"
            raise ValueError(f"ChannelZeroPad(halves={self.halves}) needs {need}; got shape {tuple(x.shape)}")
        if not self.halves:
            return torch.cat([x, x.new_zeros((x.shape[0], self.pad, *x.shape[2:]))], dim=1)
        x1, x2 = torch.chunk(x, 2, dim=1)
        zeros = x.new_zeros((x.shape[0], self.pad // 2, *x.shape[2:]))
        return torch.cat([x1, zeros, x2, zeros], dim=1)

    def inverse(self, y: torch.Tensor, *conditioning: Any, **kw: Any) -> torch.Tensor:
        _tensor(self, y)
        if not self.halves:
            return y[:, : y.shape[1] - self.pad]
        y1, y2 = torch.chunk(y, 2, dim=1)
        keep = y1.shape[1] - self.pad // 2
        return torch.cat([y1[:, :keep], y2[:, :keep]], dim=1)

    def reverse(self, y: Any, grad_y: Any, step: ReverseStep) -> tuple[Any, Any, ParamGrads]:
        # The adjoint of adding zero channels is dropping those channels of the gradient.
        return self.inverse(y), self.inverse(grad_y), []

    def reverse_inverse(self, x: Any, grad_x: Any, step: ReverseStep) -> tuple[Any, Any, ParamGrads]:
        # ... and the adjoint of dropping them is adding zeros: the forward. The rebuilt y has
        # zeros where the forward had zeros, which is what the inverse dropped only if they were
        # zeros; for an inverse-direction chain that is the contract of ChannelZeroPad.
        return self.forward(x), self.forward(grad_x), []

    def extra_repr(self) -> str:
        return f"pad={self.pad}, halves={self.halves}"


class Invertible1x1Conv(InvertibleModule):
    """Glow's invertible 1x1 convolution: mixes channels with a learned invertible matrix.

    Initialised to a random orthogonal matrix (well conditioned); the inverse solves with the
    matrix's inverse. It keeps the channel count (use :class:`ChannelZeroPad` to widen).

    Args:
        channels: the number of channels C; the weight is C x C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q)

    def forward(self, x: torch.Tensor, *conditioning: Any, **kw: Any) -> torch.Tensor:
        """Mix the channels (conditioning arguments of a sequence are ignored)."""
        _tensor(self, x)
        c = self.weight.shape[0]
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"Invertible1x1Conv({c}) needs a (B, {c}, H, W) input; got shape {tuple(x.shape)}")
        return F.conv2d(x, self.weight[:, :, None, None])

    def inverse(self, y: torch.Tensor, *conditioning: Any, **kw: Any) -> torch.Tensor:
        _tensor(self, y)
        w_inv = torch.linalg.inv(self.weight.double()).to(self.weight.dtype)
        return F.conv2d(y, w_inv[:, :, None, None])

    def extra_repr(self) -> str:
        return f"channels={self.weight.shape[0]}"
