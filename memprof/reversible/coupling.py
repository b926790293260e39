"""Additive coupling (RevNet): pure functions, then the module with forward, inverse and reverse."""

from __future__ import annotations

import torch
from torch import nn

from ._state import NULL_TAPE, RngTape
from .base import InvertibleModule, ParamGrads, grad_params

__all__ = ["AdditiveCoupling", "additive_coupling", "additive_coupling_inverse"]


def _apply(fn: nn.Module | None, name: str, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """fn(x), checked to have the shape of the half it is added to."""
    if fn is None:
        return None
    out = fn(x)
    if not isinstance(out, torch.Tensor) or out.shape != like.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{name} maps a half of shape {tuple(x.shape)} to {got}, but its output is added to a "
            f"half of shape {tuple(like.shape)}; {name} must preserve the half's shape"
        )
    return out


def additive_coupling(
    x1: torch.Tensor, x2: torch.Tensor, F: nn.Module | None, G: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """y1 = x1 + F(x2); y2 = x2 + G(y1). A missing F or G shifts nothing."""
    f = _apply(F, "F", x2, x1)
    y1 = x1 if f is None else x1 + f
    g = _apply(G, "G", y1, x2)
    y2 = x2 if g is None else x2 + g
    return y1, y2


def additive_coupling_inverse(
    y1: torch.Tensor, y2: torch.Tensor, F: nn.Module | None, G: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 = y2 - G(y1); x1 = y1 - F(x2)."""
    g = _apply(G, "G", y1, y2)
    x2 = y2 if g is None else y2 - g
    f = _apply(F, "F", x2, y1)
    x1 = y1 if f is None else y1 - f
    return x1, x2


class AdditiveCoupling(InvertibleModule):
    """RevNet's additive coupling: y1 = x1 + F(x2), y2 = x2 + G(y1).

    The input is split into equal halves along ``split_dim``. With ``F=None`` it is NICE's
    coupling (y1 = x1, y2 = x2 + G(x1)); with ``G=None`` only the first half is shifted.

    Args:
        F: residual function of the second half (its output has the first half's shape), or None.
        G: residual function of the first output half, or None.
        split_dim: the dimension split in two (channels for images, features for vectors).

    Raises:
        ValueError: if both F and G are None, or (at call time) the split dimension is odd or
            F/G change the shape of the half they are added to.
    """

    records_rng = True

    def __init__(self, F: nn.Module | None, G: nn.Module | None, split_dim: int = 1) -> None:
        super().__init__()
        if F is None and G is None:
            raise ValueError("AdditiveCoupling needs F or G (or both); got F=None and G=None")
        self.F = F
        self.G = G
        self.split_dim = split_dim
        self._memprof_tape: RngTape = NULL_TAPE

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.split_dim
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"split_dim={dim} is out of range for an input of shape {tuple(x.shape)}")
        size = x.shape[dim]
        if size % 2:
            raise ValueError(
                f"cannot split an input of shape {tuple(x.shape)} into equal halves along "
                f"dim {dim}: its size there, {size}, is odd"
            )
        x1, x2 = torch.chunk(x, 2, dim=dim)
        return x1, x2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self._split(x)
        tape = self._memprof_tape
        with tape.record("F"):
            f = _apply(self.F, "F", x2, x1)
        y1 = x1 if f is None else x1 + f
        with tape.record("G"):
            g = _apply(self.G, "G", y1, x2)
        y2 = x2 if g is None else x2 + g
        return torch.cat([y1, y2], dim=self.split_dim)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = self._split(y)
        x1, x2 = additive_coupling_inverse(y1, y2, self.F, self.G)
        return torch.cat([x1, x2], dim=self.split_dim)

    def reverse(
        self, y: torch.Tensor, grad_y: torch.Tensor, tape: RngTape
    ) -> tuple[torch.Tensor, torch.Tensor | None, ParamGrads]:
        """Algorithm 1 of the deck (Gomez et al. 2017), with one recomputation of F and G.

        The inverse and the backward share the recomputed G(y1) and F(x2): each is evaluated
        once with grad, used to rebuild the input, and then differentiated.
        """
        dim = self.split_dim
        y1, y2 = self._split(y)
        gy1, gy2 = torch.chunk(grad_y, 2, dim=dim)
        pairs: list[tuple[nn.Parameter, torch.Tensor | None]] = []

        # Steps 2-3 and 5, 9: z1 = y1; x2 = y2 - G(z1); z1_bar = y1_bar + dG/dz1^T y2_bar.
        z1_bar = gy1
        if self.G is not None:
            params = grad_params(self.G)
            z1 = y1.detach().requires_grad_(True)
            with torch.enable_grad(), tape.replay("G"):
                g = _apply(self.G, "G", z1, y2)
            assert g is not None
            x2 = y2 - g.detach()
            grads = torch.autograd.grad(g, [z1, *params], gy2, allow_unused=True)
            del g
            if grads[0] is not None:
                z1_bar = gy1 + grads[0]
            pairs.extend(zip(params, grads[1:]))
        else:
            x2 = y2

        # Steps 4 and 6, 8: x1 = z1 - F(x2); x2_bar = y2_bar + dF/dx2^T z1_bar.
        x2_bar = gy2
        if self.F is not None:
            params = grad_params(self.F)
            x2_leaf = x2.detach().requires_grad_(True)
            with torch.enable_grad(), tape.replay("F"):
                f = _apply(self.F, "F", x2_leaf, y1)
            assert f is not None
            x1 = y1 - f.detach()
            grads = torch.autograd.grad(f, [x2_leaf, *params], z1_bar, allow_unused=True)
            del f
            if grads[0] is not None:
                x2_bar = gy2 + grads[0]
            pairs.extend(zip(params, grads[1:]))
        else:
            x1 = y1

        # Step 7: x1_bar = z1_bar.
        x = torch.cat([x1, x2.detach()], dim=dim)
        grad_x = torch.cat([z1_bar, x2_bar], dim=dim)
        return x, grad_x, pairs

    def extra_repr(self) -> str:
        return f"split_dim={self.split_dim}"
