"""The invertible-module protocol, streams of several tensors, and the generic reverse steps."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ._state import NULL_TAPE, RngTape

__all__ = [
    "InvertibleModule",
    "ParamGrads",
    "ReverseStep",
    "Stream",
    "is_invertible",
    "reverse_by_recompute",
    "reverse_inverse_by_recompute",
]

#: What flows between blocks: a tensor, or a tuple of streams (several tensors in and out).
Stream = torch.Tensor | tuple["Stream", ...]

#: Gradients of the tensors a block's step differentiates (its parameters, the conditioning
#: tensors), as (tensor, gradient or None) pairs.
ParamGrads = Sequence[tuple[torch.Tensor, "torch.Tensor | None"]]

Spec = None | tuple["Spec", ...]  # None: one tensor; a tuple: the spec of each element


# --- streams of several tensors --------------------------------------------------------------


def flatten(stream: Stream) -> tuple[list[torch.Tensor], Spec]:
    """The tensors of a stream, in order, and the structure to rebuild it with :func:`unflatten`."""
    if isinstance(stream, torch.Tensor):
        return [stream], None
    if isinstance(stream, (tuple, list)) and stream:
        leaves: list[torch.Tensor] = []
        specs = []
        for part in stream:
            sub, spec = flatten(part)
            leaves.extend(sub)
            specs.append(spec)
        return leaves, tuple(specs)
    raise TypeError(
        f"a reversible stream is a tensor or a non-empty tuple of streams, got {type(stream).__name__}"
    )


def unflatten(leaves: Sequence[Any], spec: Spec) -> Any:
    """Inverse of :func:`flatten`."""
    if spec is None:
        return leaves[0]
    return _build(iter(leaves), spec)


def _build(it: Iterator[Any], spec: Spec) -> Any:
    # a module-level function, not a recursive closure: a closure would form a reference cycle
    # that keeps the leaves (the sequence's output) alive until the garbage collector runs
    return next(it) if spec is None else tuple(_build(it, sub) for sub in spec)


def tree_map(fn: Callable[..., Any], first: Any, *rest: Any) -> Any:
    """Apply ``fn`` leaf by leaf to streams of the same structure."""
    if isinstance(first, (tuple, list)):
        return tuple(tree_map(fn, *parts) for parts in zip(first, *rest))
    return fn(first, *rest)


def describe(stream: Any) -> str:
    """Shapes of a stream, for error messages: (2, 4) or ((2, 4), (2, 3))."""
    if isinstance(stream, torch.Tensor):
        return str(tuple(stream.shape))
    if isinstance(stream, (tuple, list)):
        return "(" + ", ".join(describe(s) for s in stream) + ")"
    return type(stream).__name__


def is_invertible(module: nn.Module) -> bool:
    """True when ``module`` has a callable ``inverse`` (the duck-typed protocol)."""
    return callable(getattr(module, "inverse", None))


def grad_params(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require grad, each once."""
    return [p for p in module.parameters() if p.requires_grad]


def leaf(t: torch.Tensor) -> torch.Tensor:
    """A detached copy-free alias of ``t`` that autograd can differentiate with respect to."""
    return t.detach().requires_grad_(t.is_floating_point() or t.is_complex())


# --- one reverse step --------------------------------------------------------------------------


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


def gradient_roots(outputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> tuple[list[Any], list[torch.Tensor]]:
    """What autograd.grad differentiates for each output that has a graph, with its gradient.

    Gradient edges where supported, so that dropping the outputs frees their memory before the
    backward (autograd keeps one if a node saved it). Outputs without a graph are left out.
    """
    roots, kept = [], []
    for out, g in zip(outputs, grads):
        if out.requires_grad:
            roots.append(torch.autograd.graph.get_gradient_edge(out) if _EDGES_AS_OUTPUTS else out)
            kept.append(g)
    return roots, kept


# NOTE [ Tensors a branch may differentiate ]
# The recomputation in backward differentiates F and G with respect to the block's input, the
# block's parameters and the conditioning tensors handed to the sequence, and nothing else: the
# forward ran without a graph, so a tensor requiring grad that F reads from anywhere else (a
# closure, an attribute that is not a registered parameter, a tensor computed outside the block)
# would silently get no gradient, while the plain twin gives it one. Before each
# vector-Jacobian product the recomputed graph is therefore walked from the branch output; a
# leaf (AccumulateGrad) that is not one of the differentiated tensors is an error naming the
# block, the branch and the tensor's shape. The walk stops at the differentiated tensors, so
# it visits only the recomputed graph (a handful of nodes per branch) when all is well.


def _foreign_leaf(roots: Sequence[Any], allowed: set[int]) -> torch.Tensor | None:
    """A tensor requiring grad that the graph of ``roots`` reaches besides ``allowed``, or None."""
    stack = [r.node if hasattr(r, "node") else r.grad_fn for r in roots]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:  # AccumulateGrad: a leaf
            if id(variable) not in allowed:
                return variable
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return None


class ReverseStep:
    """What one block's reverse step needs besides ``(y, grad_y)``.

    Attributes:
        tape: the block's RNG tape, in replay mode.
        args, kwargs: the conditioning passed to the sequence, tensors replaced by leaves that
            the step differentiates with respect to (:attr:`leaves`).
        owned: nothing else holds ``y``: a step may rebuild x in y's memory.
        name: the block, for error messages ("block 3 (AdditiveCoupling)").
    """

    __slots__ = ("args", "kwargs", "leaves", "name", "owned", "tape")

    def __init__(
        self,
        tape: RngTape = NULL_TAPE,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        leaves: Sequence[torch.Tensor] = (),
        owned: bool = False,
        name: str = "the block",
    ) -> None:
        self.tape, self.args, self.kwargs = tape, args, kwargs or {}
        self.leaves, self.owned, self.name = list(leaves), owned, name

    def call(self, fn: Callable[..., Any], x: Any) -> Any:
        """fn(x, *conditioning)."""
        return fn(x, *self.args, **self.kwargs)

    def vjp(
        self, roots: Sequence[Any], inputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], branch: str
    ) -> list[torch.Tensor | None]:
        """Gradients of ``inputs`` (None where unused) for ``roots`` (see :func:`gradient_roots`).

        Raises:
            RuntimeError: if the graph reaches a tensor requiring grad outside ``inputs``
                (NOTE [ Tensors a branch may differentiate ]).
        """
        if not roots:
            return [None] * len(inputs)
        foreign = _foreign_leaf(roots, {id(t) for t in inputs})
        if foreign is not None:
            raise RuntimeError(
                f"ReversibleSequence: {self.name}: {branch} reads a tensor of shape "
                f"{tuple(foreign.shape)} that requires grad but is not a parameter of the block, "
                "not its input and not an argument passed to the sequence, so the reversible "
                "backward cannot give it a gradient. Register it as a parameter of the block, or "
                "pass it to the sequence (seq(x, tensor) hands it to every F and G)."
            )
        return list(torch.autograd.grad(roots, list(inputs), list(grads), allow_unused=True))


def sum_into_fresh(grads: list[torch.Tensor | None], i: int, other: torch.Tensor) -> torch.Tensor:
    """grads[i] + other, written into grads[i]'s buffer only when nothing else can see it.

    ``grads`` is what autograd.grad just returned; ``grads[i]`` is taken out of it. Its buffer
    is reused only if no other returned gradient is the same tensor or shares its memory
    (autograd hands one buffer to two inputs when an op passes a gradient through unchanged,
    e.g. ``z + p``), nothing else holds the tensor or a view of it (a gradient passed straight
    through from ``grad_y``, a user's hook), and it is dense. ``a + b`` and ``b + a`` are the
    same floats.
    """
    fresh = grads[i]
    grads[i] = None
    if fresh is None:
        return other
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if (
        use_count is not None
        and fresh.is_contiguous()
        and fresh.storage_offset() == 0
        and fresh.shape == other.shape
        and fresh.dtype == other.dtype
        and fresh._use_count() == 1
        and sys.getrefcount(fresh) <= 2  # this name and getrefcount's argument
        and not any(g is fresh for g in grads)
    ):
        st = fresh.untyped_storage()
        # one tensor on the storage, covering all of it (the storage object made here holds one too)
        if st.nbytes() == fresh.numel() * fresh.element_size() and use_count(st._cdata) == 2:
            del st
            return fresh.add_(other)
    return fresh + other


# --- the generic steps ---------------------------------------------------------------------------


def _step_through(
    block: nn.Module,
    rebuild: Callable[..., Any],
    again: Callable[..., Any],
    out: Stream,
    grad_out: Stream,
    step: ReverseStep,
) -> tuple[Stream, Stream | None, ParamGrads]:
    """Rebuild ``inp = rebuild(out)`` without grad, run ``again(inp)`` with grad, one VJP."""
    with torch.no_grad(), step.tape.region("block"):
        inp = step.call(rebuild, out)
    params = grad_params(block)
    inp_leaf = tree_map(leaf, inp)
    with torch.enable_grad(), step.tape.region("block"):
        out_again = step.call(again, inp_leaf)
    if not getattr(block, "_memprof_round_trip_checked", False):
        _check_round_trip(step.name, flatten(out)[0], flatten(out_again)[0])
        block._memprof_round_trip_checked = True
    leaves_in, spec = flatten(inp_leaf)
    roots, grads = gradient_roots(flatten(out_again)[0], flatten(grad_out)[0])
    del out_again
    result = step.vjp(roots, [*leaves_in, *params, *step.leaves], grads, "the block")
    n = len(leaves_in)
    grad_in = unflatten(result[:n], spec)
    if any(g is None for g in result[:n]):
        grad_in = tree_map(lambda g, t: torch.zeros_like(t) if g is None else g, grad_in, inp)
    return inp, grad_in, list(zip([*params, *step.leaves], result[n:]))


# NOTE [ A user-written inverse is checked once ]
# The generic reverse step rebuilds the input with the block's inverse and then runs the block
# forward again on it: the result must be the output it started from. A block whose inverse
# does not undo its forward (a user-written block with a bug) would otherwise train on wrong
# weight gradients without any error. The first reverse step of each such block therefore
# compares the two (one subtraction, free of extra recomputation) and raises if they differ
# by more than rounding: 1e-3 of the output's largest element, or 8 epsilons of the lowest
# precision autocast computes in. Later steps skip the comparison (on CUDA it costs a host
# synchronisation). Built-in couplings have their own reverse steps and are exact by
# construction; check_invertible() checks any module explicitly, before training.


def _check_round_trip(name: str, before: Sequence[torch.Tensor], again: Sequence[torch.Tensor]) -> None:
    """Raise when forward(inverse(y)) is not y up to rounding (NOTE [ A user-written inverse is checked once ])."""
    if any(t.device.type == "meta" or type(t).__name__ == "FakeTensor" for t in before):
        return
    eps = max(
        [torch.finfo(torch.get_autocast_dtype(d)).eps for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
        + [torch.finfo(t.dtype).eps for t in before if t.is_floating_point()],
        default=0.0,
    )
    rtol = max(1e-3, 8 * eps)
    for a, b in zip(before, again):
        if a.numel() == 0 or not a.is_floating_point():
            continue
        with torch.no_grad():  # one temporary of a's size, in a's dtype
            err = float((b.detach() - a).abs().max())
            scale = float(a.abs().max())
        if err > rtol * max(scale, 1e-30):
            raise RuntimeError(
                f"ReversibleSequence: {name}: its inverse() does not undo its forward(): "
                f"forward(inverse(y)) differs from y by up to {err:.3g} (max|y| = {scale:.3g}, "
                f"tolerance {rtol:g} of it), so the reversible backward would give wrong gradients. "
                "Fix the block's inverse (memprof.reversible.check_invertible helps find which)."
            )


def reverse_by_recompute(
    block: nn.Module, y: Stream, grad_y: Stream, step: ReverseStep
) -> tuple[Stream, Stream | None, ParamGrads]:
    """Rebuild a block's input from its output, then back-propagate through one recomputed forward.

    Works for any module with ``inverse``: x = inverse(y) without grad, then y' = block(x) with
    grad, and one vector-Jacobian product with ``grad_y``.

    Returns:
        ``(x, grad_x, pairs)``: the pairs cover the block's parameters and ``step.leaves``.
    """
    return _step_through(block, block.inverse, block, y, grad_y, step)


def reverse_inverse_by_recompute(
    block: nn.Module, x: Stream, grad_x: Stream, step: ReverseStep
) -> tuple[Stream, Stream | None, ParamGrads]:
    """The reverse step of ``block.inverse``: y = block(x) without grad, x' = inverse(y) with grad."""
    return _step_through(block, block, block.inverse, x, grad_x, step)


class InvertibleModule(nn.Module):
    """A module with an exact ``inverse``, usable inside a :class:`ReversibleSequence`.

    Subclasses implement ``forward(x, *conditioning)`` and ``inverse(y, *conditioning)``, where
    x and y are tensors or tuples of tensors. They may override :meth:`reverse` (and
    :meth:`reverse_inverse`) with a cheaper backward step than the generic recompute (for
    example, a permutation's gradient is the inverse permutation of the output gradient, with
    nothing to recompute).
    """

    #: True when the module records the RNG state of its own sub-regions (see AdditiveCoupling)
    #: through ``self._memprof_tape``.
    records_rng: bool = False

    def inverse(self, y: Any, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        """Return x such that ``forward(x) == y``."""
        raise NotImplementedError(f"{type(self).__name__} must implement inverse()")

    def reverse(self, y: Any, grad_y: Any, step: ReverseStep) -> tuple[Any, Any, ParamGrads]:
        """One step of reversible backward: ``(x, grad_x, pairs)`` from ``(y, grad_y)``.

        ``pairs`` gives the gradients of the block's parameters and of ``step.leaves``.
        """
        return reverse_by_recompute(self, y, grad_y, step)

    def reverse_inverse(self, x: Any, grad_x: Any, step: ReverseStep) -> tuple[Any, Any, ParamGrads]:
        """One step of backward through :meth:`inverse`: ``(y, grad_y, pairs)`` from ``(x, grad_x)``."""
        return reverse_inverse_by_recompute(self, x, grad_x, step)
