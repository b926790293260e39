"""Couplings (RevNet's additive, Real NVP's affine): pure functions, then modules with reverse steps.

A coupling splits its input into two halves. A half is a tensor, or a tuple of tensors when the
input is a pair ``(x1, x2)`` (several tensors in and out, e.g. the two streams of a reversible
transformer); F and G receive a half (and the sequence's conditioning) and return something of
the other half's structure.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.autograd.grad_mode import _unsafe_preserve_version_counter

from ._state import NULL_TAPE, RngTape
from .base import (
    InvertibleModule,
    ParamGrads,
    ReverseStep,
    describe,
    flatten,
    grad_params,
    gradient_roots,
    leaf,
    sum_into_fresh,
    tree_map,
    unflatten,
)

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "additive_coupling",
    "additive_coupling_inverse",
    "affine_scale",
]


def _same_structure(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_structure(x, y) for x, y in zip(a, b))
    return False


def _apply(fn: nn.Module | None, name: str, x: Any, like: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(x, *args, **kwargs), checked to have the structure of the half it is added to."""
    if fn is None:
        return None
    out = fn(x, *args, **kwargs)
    if not _same_structure(out, like):
        raise ValueError(
            f"{name} maps a half of shape {describe(x)} to {describe(out)}, but its output is added "
            f"to a half of shape {describe(like)}; {name} must preserve the half's shape"
        )
    return out


def _add(a: Any, b: Any) -> Any:
    return a if b is None else tree_map(torch.add, a, b)


def _sub(a: Any, b: Any) -> Any:
    return a if b is None else tree_map(torch.sub, a, b)


def additive_coupling(x1: Any, x2: Any, F: nn.Module | None, G: nn.Module | None, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """y1 = x1 + F(x2); y2 = x2 + G(y1). A missing F or G shifts nothing; args go to F and G."""
    y1 = _add(x1, _apply(F, "F", x2, x1, *args, **kwargs))
    y2 = _add(x2, _apply(G, "G", y1, x2, *args, **kwargs))
    return y1, y2


def additive_coupling_inverse(
    y1: Any, y2: Any, F: nn.Module | None, G: nn.Module | None, *args: Any, **kwargs: Any
) -> tuple[Any, Any]:
    """x2 = y2 - G(y1); x1 = y1 - F(x2)."""
    x2 = _sub(y2, _apply(G, "G", y1, y2, *args, **kwargs))
    x1 = _sub(y1, _apply(F, "F", x2, y1, *args, **kwargs))
    return x1, x2


def _into(out: Any, value: Any) -> None:
    tree_map(lambda o, v: o.copy_(v), out, value)


class _Coupling(InvertibleModule):
    """What the couplings share: halves of a tensor or of a pair, F and G, RNG regions."""

    records_rng = True

    def __init__(self, F: nn.Module | None, G: nn.Module | None, split_dim: int) -> None:
        super().__init__()
        if F is None and G is None:
            raise ValueError(f"{type(self).__name__} needs F or G (or both); got F=None and G=None")
        self.F = F
        self.G = G
        self.split_dim = split_dim
        self._memprof_tape: RngTape = NULL_TAPE

    def _halves(self, x: Any) -> tuple[Any, Any]:
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise ValueError(
                    f"{type(self).__name__} takes a tensor or a pair of halves (x1, x2); got a "
                    f"tuple of {len(x)} of shapes {describe(x)}"
                )
            return x[0], x[1]
        if not isinstance(x, torch.Tensor):
            # ValueError, not TypeError: the sequence names the block for ValueErrors of its blocks
            raise ValueError(f"{type(self).__name__} takes a tensor or a pair of halves, got {type(x).__name__}")  # noqa: TRY004
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

    def _join(self, like: Any, a: Any, b: Any) -> Any:
        return torch.cat([a, b], dim=self.split_dim) if isinstance(like, torch.Tensor) else (a, b)

    def _buffers_like(self, y: Any, owned: bool) -> tuple[Any, Any, Any]:
        """(x, x1, x2): where the rebuilt input goes; for a tensor, halves are views of one buffer."""
        if isinstance(y, torch.Tensor):
            x = y if owned else torch.empty_like(y)
            x1, x2 = torch.chunk(x, 2, dim=self.split_dim)
            return x, x1, x2
        y1, y2 = self._halves(y)
        x1, x2 = tree_map(torch.empty_like, y1), tree_map(torch.empty_like, y2)
        return (x1, x2), x1, x2

    def _region(self, key: str) -> contextlib.AbstractContextManager[None]:
        return self._memprof_tape.region(key)

    def extra_repr(self) -> str:
        return f"split_dim={self.split_dim}"


def _writing(x: Any) -> contextlib.AbstractContextManager[None]:
    """Writes into one half of x while a recomputed graph saved the other (a view of the same
    tensor): the halves never overlap, so the version counter is put back (NOTE in reverse)."""
    return _unsafe_preserve_version_counter(x) if isinstance(x, torch.Tensor) else contextlib.nullcontext()


class AdditiveCoupling(_Coupling):
    """RevNet's additive coupling: y1 = x1 + F(x2), y2 = x2 + G(y1).

    The input is split into equal halves along ``split_dim``, or is a pair ``(x1, x2)`` whose
    halves are tensors or tuples of tensors (F maps x2's structure to x1's, G the reverse). With
    ``F=None`` it is NICE's coupling (y1 = x1, y2 = x2 + G(x1)); with ``G=None`` only the first
    half is shifted. Extra arguments of the call (conditioning) are passed to F and G.

    Args:
        F: residual function of the second half (its output has the first half's shape), or None.
        G: residual function of the first output half, or None.
        split_dim: the dimension split in two (channels for images, features for vectors).

    Raises:
        ValueError: if both F and G are None, or (at call time) the split dimension is odd or
            F/G change the shape of the half they are added to.
    """

    def __init__(self, F: nn.Module | None, G: nn.Module | None, split_dim: int = 1) -> None:
        super().__init__(F, G, split_dim)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        x1, x2 = self._halves(x)
        if torch.is_grad_enabled() or not isinstance(x, torch.Tensor):
            # Plain autograd, graph through cat (or a pair). The reversible forward runs without
            # grad, so for a tensor it takes the branch below; the arithmetic is the same.
            with self._region("F"):
                f = _apply(self.F, "F", x2, x1, *args, **kwargs)
            y1 = _add(x1, f)
            with self._region("G"):
                g = _apply(self.G, "G", y1, x2, *args, **kwargs)
            return self._join(x, y1, _add(x2, g))
        # No graph (the reversible forward, or inference): write both halves straight into the
        # output, without half-size temporaries and a concatenation copy.
        y = torch.empty_like(x)
        y1, y2 = torch.chunk(y, 2, dim=self.split_dim)
        with self._region("F"):
            f = _apply(self.F, "F", x2, x1, *args, **kwargs)
        _into(y1, x1) if f is None else torch.add(x1, f, out=y1)
        del f
        with self._region("G"):
            g = _apply(self.G, "G", y1, x2, *args, **kwargs)
        _into(y2, x2) if g is None else torch.add(x2, g, out=y2)
        return y

    def inverse(self, y: Any, *args: Any, **kwargs: Any) -> Any:
        y1, y2 = self._halves(y)
        with self._region("G"):
            x2 = _sub(y2, _apply(self.G, "G", y1, y2, *args, **kwargs))
        with self._region("F"):
            x1 = _sub(y1, _apply(self.F, "F", x2, y1, *args, **kwargs))
        return self._join(y, x1, x2)

    def reverse(self, y: Any, grad_y: Any, step: ReverseStep) -> tuple[Any, Any, ParamGrads]:
        """Algorithm 1 of the deck (Gomez et al. 2017), with one recomputation of F and G.

        The inverse and the backward share the recomputed G(y1) and F(x2): each is evaluated
        once with grad, used to rebuild its half of the input, and then differentiated. With
        ``step.owned`` (nobody else holds ``y``) the input is rebuilt in y's own memory.
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
        #   (sum_into_fresh; only when nothing else can see that buffer: autograd may return it
        #   as a parameter's gradient too, issue 11), half the size of grad_x;
        # - the halves of x are views of one tensor and share its version counter, so writing one
        #   half while the recomputed graph holds the other would fail autograd's saved-tensor
        #   check at the backward. The halves never overlap, so there is nothing for the check
        #   to catch: the write is made under _unsafe_preserve_version_counter, which puts the
        #   counter back (PyTorch's tool for exactly this; FSDP2 uses it for its buffers).
        owned = step.owned and isinstance(y, torch.Tensor)
        y1, y2 = self._halves(y)
        gy1, gy2 = self._halves(grad_y)
        x, x1, x2 = self._buffers_like(y, owned)
        pairs: list[tuple[torch.Tensor, torch.Tensor | None]] = []

        # Steps 2-3, 5 and 9: z1 = y1; x2 = y2 - G(z1); z1_bar = y1_bar + dG/dz1^T y2_bar.
        if self.G is not None:
            params = [*grad_params(self.G), *step.leaves]
            z1 = tree_map(leaf, y1)
            with torch.enable_grad(), step.tape.replay("G"):
                g = step.call(lambda h, *a, **k: _apply(self.G, "G", h, y2, *a, **k), z1)
            with _writing(x):  # G's graph saved z1, a view of y (= x if owned)
                tree_map(lambda o, a, b: torch.sub(a, b.detach(), out=o), x2, y2, g)
            z1_leaves, spec = flatten(z1)
            roots, grads_out = gradient_roots(flatten(g)[0], flatten(gy2)[0])
            del g
            grads = step.vjp(roots, [*z1_leaves, *params], grads_out, "G")
            del roots, z1
            n = len(z1_leaves)
            z1_bar = unflatten([sum_into_fresh(grads, i, o) for i, o in enumerate(flatten(gy1)[0])], spec)
            pairs.extend(zip(params, grads[n:]))
            del grads
        else:
            z1_bar = gy1
            if not owned:
                _into(x2, y2)

        # Steps 4, 6 and 8: x1 = z1 - F(x2); x2_bar = y2_bar + dF/dx2^T z1_bar.
        grads_x2: list[torch.Tensor | None] | None = None
        if self.F is not None:
            params = [*grad_params(self.F), *step.leaves]
            x2_leaf = tree_map(leaf, x2)
            with torch.enable_grad(), step.tape.replay("F"):
                f = step.call(lambda h, *a, **k: _apply(self.F, "F", h, y1, *a, **k), x2_leaf)
            with _writing(x):  # F's graph saved x2_leaf, a view of x
                tree_map(lambda o, a, b: torch.sub(a, b.detach(), out=o), x1, y1, f)
            x2_leaves = flatten(x2_leaf)[0]
            roots, grads_out = gradient_roots(flatten(f)[0], flatten(z1_bar)[0])
            del f
            grads = step.vjp(roots, [*x2_leaves, *params], grads_out, "F")
            del roots, x2_leaf
            n = len(x2_leaves)
            grads_x2 = grads[:n]
            pairs.extend(zip(params, grads[n:]))
            del grads
        elif not owned:
            _into(x1, y1)

        # Step 7: x1_bar = z1_bar. grad_x is allocated only now, when no recomputed graph is alive.
        if isinstance(grad_y, torch.Tensor):
            grad_x = torch.empty_like(grad_y)
            x1_bar, x2_bar = torch.chunk(grad_x, 2, dim=self.split_dim)
            x1_bar.copy_(z1_bar)
        else:
            x2_bar = tree_map(torch.empty_like, gy2)
            x1_bar = z1_bar
            grad_x = (x1_bar, x2_bar)
        del z1_bar
        gy2_leaves, x2_bar_leaves = flatten(gy2)[0], flatten(x2_bar)[0]
        for i, (out, a) in enumerate(zip(x2_bar_leaves, gy2_leaves)):
            b = None if grads_x2 is None else grads_x2[i]
            out.copy_(a) if b is None else torch.add(a, b, out=out)
        return x, grad_x, pairs

    def reverse_inverse(self, x: Any, grad_x: Any, step: ReverseStep) -> tuple[Any, Any, ParamGrads]:
        """Backward through :meth:`inverse` (x2 = y2 - G(y1), x1 = y1 - F(x2)), one recomputation
        of F then G, each used to rebuild its half of y and differentiated once.

        y1 = x1 + F(x2):  y1_bar = x1_bar + dG/dy1^T (-x2_bar_total)
        y2 = x2 + G(y1):  y2_bar = x2_bar_total = x2_bar + dF/dx2^T (-x1_bar)
        """
        x1, x2 = self._halves(x)
        gx1, gx2 = self._halves(grad_x)
        y, y1, y2 = self._buffers_like(x, False)
        pairs: list[tuple[torch.Tensor, torch.Tensor | None]] = []

        # y1 = x1 + F(x2); x2's total gradient picks up -dF/dx2^T x1_bar.
        x2_total = gx2
        if self.F is not None:
            params = [*grad_params(self.F), *step.leaves]
            x2_leaf = tree_map(leaf, x2)
            with torch.enable_grad(), step.tape.replay("F"):
                f = step.call(lambda h, *a, **k: _apply(self.F, "F", h, x1, *a, **k), x2_leaf)
            tree_map(lambda o, a, b: torch.add(a, b.detach(), out=o), y1, x1, f)
            x2_leaves = flatten(x2_leaf)[0]
            roots, grads_out = gradient_roots(flatten(f)[0], [-g for g in flatten(gx1)[0]])
            del f
            grads = step.vjp(roots, [*x2_leaves, *params], grads_out, "F")
            del roots, x2_leaf
            n = len(x2_leaves)
            x2_total = unflatten(
                [a if b is None else a + b for a, b in zip(flatten(gx2)[0], grads[:n])], flatten(gx2)[1]
            )
            pairs.extend(zip(params, grads[n:]))
        else:
            _into(y1, x1)

        # y2 = x2 + G(y1); y1's gradient picks up -dG/dy1^T x2_total.
        y1_bar = gx1
        if self.G is not None:
            params = [*grad_params(self.G), *step.leaves]
            y1_leaf = tree_map(leaf, y1)
            with torch.enable_grad(), step.tape.replay("G"):
                g = step.call(lambda h, *a, **k: _apply(self.G, "G", h, x2, *a, **k), y1_leaf)
            with _writing(y):  # G's graph saved y1_leaf, a view of y
                tree_map(lambda o, a, b: torch.add(a, b.detach(), out=o), y2, x2, g)
            y1_leaves = flatten(y1_leaf)[0]
            roots, grads_out = gradient_roots(flatten(g)[0], [-t for t in flatten(x2_total)[0]])
            del g
            grads = step.vjp(roots, [*y1_leaves, *params], grads_out, "G")
            del roots, y1_leaf
            n = len(y1_leaves)
            y1_bar = unflatten(
                [a if b is None else a + b for a, b in zip(flatten(gx1)[0], grads[:n])], flatten(gx1)[1]
            )
            pairs.extend(zip(params, grads[n:]))
        else:
            _into(y2, x2)
        return y, self._join(grad_x, y1_bar, x2_total), pairs


# NOTE [ Affine coupling ]
# Real NVP / Glow: a branch returns a log-scale s and a shift t for the other half, and
# y1 = x1 * exp(s_F(x2)) + t_F(x2), y2 = x2 * exp(s_G(y1)) + t_G(y1). The scale is kept away
# from zero and from overflow by a soft clamp, scale = exp(c * tanh(s / c)) in [e^-c, e^c]
# (c = ``clamp``, 2 by default), so the inverse (y - t) / scale is always well conditioned.
# Forward without a graph writes y = x * scale, then adds t, into the output: the same two
# roundings as the plain twin's x * scale + t, hence the same floats. The reverse step rebuilds
# x2 = (y2 - t) / scale from one recomputation of G, then differentiates y2' = x2 * scale + t
# once with respect to x2, y1 (through G) and G's parameters, and the same for F: one extra
# forward of each branch, as for the additive coupling, and memory flat in depth (one
# recomputed graph and one half-size product alive at a time).


def affine_scale(s: torch.Tensor, clamp: float) -> torch.Tensor:
    """exp(clamp * tanh(s / clamp)): a positive scale in [e^-clamp, e^clamp], ~exp(s) near 0."""
    return torch.exp(clamp * torch.tanh(s / clamp))


class AffineCoupling(_Coupling):
    """Affine coupling (Real NVP, Glow): y1 = x1 * scale_F(x2) + t_F(x2), y2 = x2 * scale_G(y1) + t_G(y1).

    F and G return a pair ``(s, t)``, or one tensor with twice the half's size along
    ``split_dim`` that is split into s and t. s and t must broadcast to the half's shape (a
    per-channel scale is fine). The scale is ``exp(clamp * tanh(s / clamp))``, in
    ``[e^-clamp, e^clamp]``, so the coupling is exactly invertible and never divides by ~0.
    With ``F=None`` it is Real NVP's coupling (y1 = x1, y2 = x2 * scale(x1) + t(x1)). The
    input is split like :class:`AdditiveCoupling`'s (a tensor, or a pair of halves).

    Args:
        F: maps the second half to (s, t) for the first half, or None.
        G: maps the first output half to (s, t) for the second half, or None.
        split_dim: the dimension split in two.
        clamp: bound of |log scale| (> 0).

    Raises:
        ValueError: if both F and G are None, clamp is not positive, or (at call time) s or t do
            not broadcast to the half.
    """

    def __init__(self, F: nn.Module | None, G: nn.Module | None, split_dim: int = 1, clamp: float = 2.0) -> None:
        super().__init__(F, G, split_dim)
        if not clamp > 0:
            raise ValueError(f"clamp must be positive, got {clamp!r}")
        self.clamp = float(clamp)

    def _scale_shift(self, fn: nn.Module, name: str, h: Any, like: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """(scale, t) for the half ``like``, from fn(h)."""
        out = fn(h, *args, **kwargs)
        if isinstance(out, torch.Tensor) and isinstance(like, torch.Tensor):
            if out.dim() != like.dim() or out.shape[self.split_dim] != 2 * like.shape[self.split_dim]:
                raise ValueError(
                    f"{name} of an AffineCoupling returns one tensor of shape {tuple(out.shape)}; it "
                    f"must have twice the half's size along dim {self.split_dim} (half: "
                    f"{tuple(like.shape)}), or return a pair (s, t)"
                )
            s, t = torch.chunk(out, 2, dim=self.split_dim)
        elif isinstance(out, (tuple, list)) and len(out) == 2:
            s, t = out
        else:
            raise ValueError(f"{name} of an AffineCoupling must return (s, t); got {describe(out)}")

        def check(a: torch.Tensor, half: torch.Tensor) -> None:
            if torch.broadcast_shapes(a.shape, half.shape) != half.shape:
                raise ValueError(
                    f"{name} returns s or t of shape {tuple(a.shape)}, which does not broadcast to "
                    f"the half of shape {tuple(half.shape)}"
                )

        tree_map(check, s, like)
        tree_map(check, t, like)
        return tree_map(lambda a: affine_scale(a, self.clamp), s), t

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        x1, x2 = self._halves(x)
        if torch.is_grad_enabled() or not isinstance(x, torch.Tensor):
            y1 = x1
            if self.F is not None:
                with self._region("F"):
                    scale, t = self._scale_shift(self.F, "F", x2, x1, *args, **kwargs)
                y1 = tree_map(lambda a, s_, t_: a * s_ + t_, x1, scale, t)
            y2 = x2
            if self.G is not None:
                with self._region("G"):
                    scale, t = self._scale_shift(self.G, "G", y1, x2, *args, **kwargs)
                y2 = tree_map(lambda a, s_, t_: a * s_ + t_, x2, scale, t)
            return self._join(x, y1, y2)
        y = torch.empty_like(x)
        y1, y2 = torch.chunk(y, 2, dim=self.split_dim)
        for fn, name, src, out, h in ((self.F, "F", x1, y1, x2), (self.G, "G", x2, y2, y1)):
            if fn is None:
                out.copy_(src)
                continue
            with self._region(name):
                scale, t = self._scale_shift(fn, name, h, src, *args, **kwargs)
            torch.mul(src, scale, out=out)
            out.add_(t)
            del scale, t
        return y

    def inverse(self, y: Any, *args: Any, **kwargs: Any) -> Any:
        y1, y2 = self._halves(y)
        x2 = y2
        if self.G is not None:
            with self._region("G"):
                scale, t = self._scale_shift(self.G, "G", y1, y2, *args, **kwargs)
            x2 = tree_map(lambda a, s_, t_: (a - t_) / s_, y2, scale, t)
        x1 = y1
        if self.F is not None:
            with self._region("F"):
                scale, t = self._scale_shift(self.F, "F", x2, y1, *args, **kwargs)
            x1 = tree_map(lambda a, s_, t_: (a - t_) / s_, y1, scale, t)
        return self._join(y, x1, x2)

    def _undo(
        self,
        fn: nn.Module,
        name: str,
        h: Any,
        out_half: Any,
        into: Any,
        grad_out: Any,
        x: Any,
        step: ReverseStep,
    ) -> tuple[Any, Any, list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """Rebuild ``into = (out_half - t(h)) / scale(h)`` and back-propagate out_half = into * scale + t.

        Returns (grad of h, grad of the rebuilt half, parameter/conditioning pairs).
        """
        params = [*grad_params(fn), *step.leaves]
        h_leaf = tree_map(leaf, h)
        with torch.enable_grad(), step.tape.replay(name):
            scale, t = step.call(lambda a, *r, **k: self._scale_shift(fn, name, a, out_half, *r, **k), h_leaf)
        with _writing(x):  # the graph may have saved h, a view of x
            tree_map(lambda o, a, s_, t_: torch.div(torch.sub(a, t_.detach()), s_.detach(), out=o), into, out_half, scale, t)
        into_leaf = tree_map(leaf, into)
        with torch.enable_grad():
            again = tree_map(lambda a, s_, t_: a * s_ + t_, into_leaf, scale, t)
        del scale, t
        h_leaves, h_spec = flatten(h_leaf)
        in_leaves, in_spec = flatten(into_leaf)
        roots, grads_out = gradient_roots(flatten(again)[0], flatten(grad_out)[0])
        del again
        grads = step.vjp(roots, [*h_leaves, *in_leaves, *params], grads_out, name)
        n, m = len(h_leaves), len(in_leaves)
        return unflatten(grads[:n], h_spec), unflatten(grads[n:n + m], in_spec), list(zip(params, grads[n + m:]))

    def reverse(self, y: Any, grad_y: Any, step: ReverseStep) -> tuple[Any, Any, ParamGrads]:
        """One recomputation of G then F, each inverted and differentiated (NOTE [ Affine coupling ])."""
        owned = step.owned and isinstance(y, torch.Tensor)
        y1, y2 = self._halves(y)
        gy1, gy2 = self._halves(grad_y)
        x, x1, x2 = self._buffers_like(y, owned)
        pairs: list[tuple[torch.Tensor, torch.Tensor | None]] = []

        def plus(a: Any, b: Any) -> Any:
            return tree_map(lambda p, q: p if q is None else (q if p is None else p + q), a, b)

        if self.G is not None:
            dy1, x2_bar, got = self._undo(self.G, "G", y1, y2, x2, gy2, x, step)
            y1_bar = plus(gy1, dy1)
            pairs.extend(got)
        else:
            if not owned:
                _into(x2, y2)
            x2_bar, y1_bar = gy2, gy1
        if self.F is not None:
            dx2, x1_bar, got = self._undo(self.F, "F", x2, y1, x1, y1_bar, x, step)
            x2_bar = plus(x2_bar, dx2)
            pairs.extend(got)
        else:
            if not owned:
                _into(x1, y1)
            x1_bar = y1_bar
        zero = tree_map(lambda b, ref: torch.zeros_like(ref) if b is None else b, (x1_bar, x2_bar), (y1, y2))
        return x, self._join(grad_y, *zero), pairs

    def extra_repr(self) -> str:
        return f"split_dim={self.split_dim}, clamp={self.clamp}"
