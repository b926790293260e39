"""Additive coupling (RevNet): pure functions, then the module with forward, inverse and reverse."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.grad_mode import _unsafe_preserve_version_counter

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


def _sum_into_fresh(fresh: torch.Tensor | None, other: torch.Tensor, avoid: torch.Tensor) -> torch.Tensor:
    """fresh + other, written into ``fresh`` when that is safe, else a new tensor.

    ``fresh`` is a gradient that autograd.grad just returned to us; it is reused unless it shares
    memory with ``avoid`` (a gradient passed straight through, e.g. by an identity branch) or is
    not a dense tensor with a buffer of its own. ``fresh + other`` and ``other + fresh`` are the same floats.
    """
    if fresh is None:
        return other
    if (
        fresh.is_contiguous()
        and fresh.untyped_storage().nbytes() == fresh.numel() * fresh.element_size()
        and fresh.shape == other.shape
        and fresh.dtype == other.dtype
        and fresh.untyped_storage()._cdata != avoid.untyped_storage()._cdata
    ):
        return fresh.add_(other)
    return fresh + other


def _probe_edges_as_outputs() -> bool:
    """Whether torch.autograd.grad accepts gradient edges as outputs (torch >= 2.4 or so)."""
    try:
        a = torch.ones(1, requires_grad=True)
        with torch.enable_grad():
            b = a * 2
        torch.autograd.grad(torch.autograd.graph.get_gradient_edge(b), a, torch.ones(1))
        return True
    except (AttributeError, TypeError, RuntimeError):
        return False


#: probed once at import, outside any FakeTensorMode, so estimates and measurements agree
_EDGES_AS_OUTPUTS = _probe_edges_as_outputs()


def _gradient_root(out: torch.Tensor) -> torch.Tensor | torch.autograd.graph.GradientEdge:
    """What autograd.grad differentiates for ``out``: its gradient edge where supported, so that
    dropping ``out`` frees its memory before the backward (autograd keeps it if a node saved it)."""
    return torch.autograd.graph.get_gradient_edge(out) if _EDGES_AS_OUTPUTS else out


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
        once with grad, used to rebuild its half of the input, and then differentiated. With
        ``y_owned`` (nobody else holds ``y``) the input is rebuilt in y's own memory.
        """
        # NOTE [ Memory of one reverse step ]
        # Alive at the peak: y (rebuilt in place into x when we own it, else x beside it),
        # grad_y (autograd's), grad_x, and the graph of one recomputed F or G. Three orderings
        # keep that set small (measured on revvgg at batch 128, issue 4):
        # - each half of x is written as soon as G(y1) (resp. F(x2)) is computed, and the
        #   branch output is then dropped before its backward: autograd.grad gets the output's
        #   gradient edge, not the tensor, so the output's memory (one half) is free during the
        #   backward unless the branch's last op saved it (then autograd keeps it, rightly);
        # - grad_x is allocated last, when no recomputed graph is alive: until then z1_bar, the
        #   gradient F's backward needs, lives in the buffer autograd returned for dG/dz1
        #   (_sum_into_fresh), half the size of grad_x;
        # - the halves of x are views of one tensor and share its version counter, so writing one
        #   half while the recomputed graph holds the other would fail autograd's saved-tensor
        #   check at the backward. The halves never overlap, so there is nothing for the check
        #   to catch: the write is made under _unsafe_preserve_version_counter, which puts the
        #   counter back (PyTorch's tool for exactly this; FSDP2 uses it for its buffers).
        dim = self.split_dim
        y1, y2 = self._split(y)
        gy1, gy2 = torch.chunk(grad_y, 2, dim=dim)
        x = y if y_owned else torch.empty_like(y)
        x1, x2 = torch.chunk(x, 2, dim=dim)
        pairs: list[tuple[nn.Parameter, torch.Tensor | None]] = []

        # Steps 2-3, 5 and 9: z1 = y1; x2 = y2 - G(z1); z1_bar = y1_bar + dG/dz1^T y2_bar.
        if self.G is not None:
            params = grad_params(self.G)
            z1 = y1.detach().requires_grad_(True)
            with torch.enable_grad(), tape.replay("G"):
                g = _apply(self.G, "G", z1, y2)
            assert g is not None
            with _unsafe_preserve_version_counter(x):  # G's graph saved z1, a view of y (= x if owned)
                torch.sub(y2, g.detach(), out=x2)
            root = _gradient_root(g)
            del g
            grads = torch.autograd.grad(root, [z1, *params], gy2, allow_unused=True)
            del root, z1
            z1_bar = _sum_into_fresh(grads[0], gy1, grad_y)
            pairs.extend(zip(params, grads[1:]))
            del grads
        else:
            z1_bar = gy1
            if not y_owned:
                x2.copy_(y2)

        # Steps 4, 6 and 8: x1 = z1 - F(x2); x2_bar = y2_bar + dF/dx2^T z1_bar.
        grads_x2: torch.Tensor | None = None
        if self.F is not None:
            params = grad_params(self.F)
            x2_leaf = x2.detach().requires_grad_(True)
            with torch.enable_grad(), tape.replay("F"):
                f = _apply(self.F, "F", x2_leaf, y1)
            assert f is not None
            with _unsafe_preserve_version_counter(x):  # F's graph saved x2_leaf, a view of x
                torch.sub(y1, f.detach(), out=x1)
            root = _gradient_root(f)
            del f
            grads = torch.autograd.grad(root, [x2_leaf, *params], z1_bar, allow_unused=True)
            del root, x2_leaf
            grads_x2 = grads[0]
            pairs.extend(zip(params, grads[1:]))
            del grads
        elif not y_owned:
            x1.copy_(y1)

        # Step 7: x1_bar = z1_bar. grad_x is allocated only now, when no recomputed graph is alive.
        grad_x = torch.empty_like(grad_y)
        x1_bar, x2_bar = torch.chunk(grad_x, 2, dim=dim)
        x1_bar.copy_(z1_bar)
        del z1_bar
        _add_into(x2_bar, gy2, grads_x2)
        return x, grad_x, pairs

    def extra_repr(self) -> str:
        return f"split_dim={self.split_dim}"
