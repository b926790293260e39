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


def _add_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None) -> None:
    """out = a + b (or a when b is None), written into ``out``."""
    if b is None:
        out.copy_(a)
    else:
        torch.add(a, b, out=out)


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
        if torch.is_grad_enabled():
            # Plain autograd, graph through cat. (The reversible forward always runs without
            # grad, so RNG is only ever recorded below.)
            y1, y2 = additive_coupling(x1, x2, self.F, self.G)
            return torch.cat([y1, y2], dim=self.split_dim)
        tape = self._memprof_tape
        # No graph (the reversible forward, or inference): write both halves straight into the
        # output, without half-size temporaries and a concatenation copy.
        y = torch.empty_like(x)
        y1, y2 = torch.chunk(y, 2, dim=self.split_dim)
        with tape.record("F"):
            f = _apply(self.F, "F", x2, x1)
        _add_into(y1, x1, f)
        del f
        with tape.record("G"):
            g = _apply(self.G, "G", y1, x2)
        _add_into(y2, x2, g)
        return y

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = self._split(y)
        x1, x2 = additive_coupling_inverse(y1, y2, self.F, self.G)
        return torch.cat([x1, x2], dim=self.split_dim)

    def reverse(
        self, y: torch.Tensor, grad_y: torch.Tensor, tape: RngTape, *, y_owned: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, ParamGrads]:
        """Algorithm 1 of the deck (Gomez et al. 2017), with one recomputation of F and G.

        The inverse and the backward share the recomputed G(y1) and F(x2): each is evaluated
        once with grad, differentiated, and then used to rebuild its half of the input. With
        ``y_owned`` (nobody else holds ``y``) the input is rebuilt in y's own memory.
        """
        # NOTE [ Memory of one reverse step ]
        # Alive at the peak: y (rebuilt in place into x when we own it), grad_y (autograd's),
        # grad_x (written half by half, no temporaries), and the graph of one recomputed F or G.
        # Each half of x is written only after the graph that read the old half has been
        # differentiated: the halves are views of one tensor and share its version counter, so
        # an earlier in-place write would (rightly) fail autograd's saved-tensor check.
        dim = self.split_dim
        y1, y2 = self._split(y)
        gy1, gy2 = torch.chunk(grad_y, 2, dim=dim)
        x = y if y_owned else torch.empty_like(y)
        x1, x2 = torch.chunk(x, 2, dim=dim)
        grad_x = torch.empty_like(grad_y)
        z1_bar, x2_bar = torch.chunk(grad_x, 2, dim=dim)
        pairs: list[tuple[nn.Parameter, torch.Tensor | None]] = []

        # Steps 2-3, 5 and 9: z1 = y1; x2 = y2 - G(z1); z1_bar = y1_bar + dG/dz1^T y2_bar.
        if self.G is not None:
            params = grad_params(self.G)
            z1 = y1.detach().requires_grad_(True)
            with torch.enable_grad(), tape.replay("G"):
                g = _apply(self.G, "G", z1, y2)
            assert g is not None
            grads = torch.autograd.grad(g, [z1, *params], gy2, allow_unused=True)
            _add_into(z1_bar, gy1, grads[0])
            pairs.extend(zip(params, grads[1:]))
            del grads, z1
            torch.sub(y2, g.detach(), out=x2)
            del g
        else:
            z1_bar.copy_(gy1)
            if not y_owned:
                x2.copy_(y2)

        # Steps 4, 6 and 8: x1 = z1 - F(x2); x2_bar = y2_bar + dF/dx2^T z1_bar.
        if self.F is not None:
            params = grad_params(self.F)
            x2_leaf = x2.detach().requires_grad_(True)
            with torch.enable_grad(), tape.replay("F"):
                f = _apply(self.F, "F", x2_leaf, y1)
            assert f is not None
            grads = torch.autograd.grad(f, [x2_leaf, *params], z1_bar, allow_unused=True)
            _add_into(x2_bar, gy2, grads[0])
            pairs.extend(zip(params, grads[1:]))
            del grads, x2_leaf
            torch.sub(y1, f.detach(), out=x1)
            del f
        else:
            x2_bar.copy_(gy2)
            if not y_owned:
                x1.copy_(y1)

        # Step 7: x1_bar = z1_bar (already in place in grad_x).
        return x, grad_x, pairs

    def extra_repr(self) -> str:
        return f"split_dim={self.split_dim}"
