"""ReversibleSequence: invertible blocks whose backward rebuilds activations instead of storing them."""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._state import NULL_TAPE, BufferTape, RngTape, capture_autocast, replay_autocast
from .base import (
    InvertibleModule,
    ReverseStep,
    Spec,
    describe,
    flatten,
    grad_params,
    is_invertible,
    leaf,
    reverse_by_recompute,
    reverse_inverse_by_recompute,
    unflatten,
)

__all__ = ["ReversibleSequence"]

# NOTE [ What a reversible sequence stores, and what is freed when ]
# Forward (reversible=True, grad enabled): every block runs inside its own autograd Function
# node, under no_grad, so no block builds a graph and no block saves its input. Each node's
# output is the next node's input and is freed as soon as the next block has consumed it. Only
# the node of the last block saves anything: its output (which the next layer usually holds
# anyway, so deduplicated it often costs nothing). Besides it, each node's ctx holds an RngTape
# that is empty unless the block drew random numbers (8 bytes per region that did, NOTE [ RNG
# state for recomputation ]) and a BufferTape that is empty unless the block wrote a buffer
# other than a normalisation layer's running statistics (NOTE [ Module buffers during
# recomputation ]); the chain holds the autocast settings once.
#
# Backward runs the nodes from last to first, as autograd orders them. Node i receives
# dL/dy_i from autograd and y_i from the node after it (through the chain's one-slot stash),
# rebuilds x_i from y_i (an AdditiveCoupling evaluates G(y1) and F(x2) once, with grad, and
# uses each both to invert and to differentiate: the deck's Algorithm 1), puts x_i in the stash
# for node i-1 and returns dL/dx_i and the block's parameter gradients. Returning the parameter
# gradients per block (not one set for the whole sequence at the end) lets autograd accumulate
# and free them block by block, as for ordinary layers: memory does not grow with depth, and
# hooks, DistributedDataParallel and torch.autograd.grad see the parameters exactly as for any
# layer (no "marked ready twice", no find_unused_parameters). At any moment one block's
# recomputation graph, one rebuilt tensor and one gradient are alive.
#
# A ReversibleSequence nested in a reversible one is walked through (its forward and hooks still
# run), so its blocks join the outer chain: nesting groups stages readably at no extra cost, and
# only the outermost output is saved.
#
# Several streams (a tuple of tensors) travel as separate node inputs and outputs, flattened
# and rebuilt around each node (base.flatten). Conditioning tensors (seq(x, *args, **kwargs))
# are inputs of every node too: each node keeps references to them (no copies), hands the
# recomputed F and G detached leaves of them, and returns their gradients, which autograd sums
# over the blocks exactly as for a parameter shared by every block. In an inverse chain
# (seq.inverse(y) under autograd) the nodes run the blocks' inverses, last block first, and
# backward rebuilds each inverse's input with the block's forward: the same memory profile.
#
# The sequence's input is not saved: it is rebuilt, up to floating-point rounding that grows
# slowly with depth (benchmarks/reconstruction_error.py measures it). Parameters changed
# in place between forward and backward would make the rebuilt activations wrong, so their
# version counters are checked and a change is an error, not silent garbage. A second backward
# without retain_graph fails with a clear error about the freed output; with retain_graph=True
# it recomputes and gives the same gradients again.


# NOTE [ The additive stream stays in float32 under autocast ]
# Under autocast a convolution before the sequence hands it a bfloat16 (or float16) tensor. The
# couplings would then add in that precision, y1 = x1 + F(x2) rounded to 8 bits of mantissa,
# and the inverse could not undo the rounding: the rebuilt inputs drift by about 1e-2 per few
# blocks. A low-precision floating input entering a sequence under autocast is therefore cast
# to float32 (in both modes, so the twins compute the same function): F and G still run in
# the autocast dtype, only the additions and the stream between blocks are float32. It costs
# one float32 copy of the input and makes the saved output float32.


def _float32_stream(x: torch.Tensor) -> torch.Tensor:
    """x in float32 when autocast is on for its device and x is a half-precision float."""
    if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
        return x.float()
    return x


class _Chain:
    """What the nodes of one reversible forward (or inverse) share."""

    __slots__ = ("autocast", "inverse", "last", "next_position", "preserve_rng_state", "stash")

    def __init__(self, num_blocks: int, preserve_rng_state: bool, inverse: bool = False) -> None:
        self.autocast = capture_autocast()
        self.inverse = inverse
        self.last = num_blocks - 1
        self.next_position = 0
        self.preserve_rng_state = preserve_rng_state
        #: position -> (the rebuilt output of the block there (its tensors), whether nothing else holds it).
        self.stash: dict[int, tuple[list[torch.Tensor], bool]] = {}


class _Conditioning:
    """The extra arguments of a sequence call: tensors travel as node inputs, the rest as is."""

    __slots__ = ("args", "kwargs", "tensors")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.tensors: list[torch.Tensor] = []

        def slot(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                self.tensors.append(v)
                return _Slot(len(self.tensors) - 1)
            return v

        self.args = tuple(slot(a) for a in args)
        self.kwargs = {k: slot(v) for k, v in kwargs.items()}

    def build(self, tensors: Sequence[torch.Tensor]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments with ``tensors`` in the tensor slots."""

        def fill(v: Any) -> Any:
            return tensors[v.index] if isinstance(v, _Slot) else v

        return tuple(fill(a) for a in self.args), {k: fill(v) for k, v in self.kwargs.items()}


class _Slot:
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _Node:
    """Everything a block's node needs that is not a tensor input."""

    __slots__ = ("chain", "cond", "index", "n_x", "position", "seq", "x_spec", "y_spec")

    def __init__(
        self, chain: _Chain, seq: ReversibleSequence, index: int, position: int, x_spec: Spec, n_x: int, cond: _Conditioning
    ) -> None:
        self.chain, self.seq, self.index, self.position = chain, seq, index, position
        self.x_spec, self.n_x, self.cond = x_spec, n_x, cond
        self.y_spec: Spec = None


def _parameter_slots(module: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Where each parameter used by this forward lives: (module, attribute name, tensor)."""
    return [(m, name, p) for m in module.modules() for name, p in m._parameters.items() if p is not None]


@contextlib.contextmanager
def _rebound_parameters(slots: list[tuple[nn.Module, str, torch.Tensor]]) -> Iterator[None]:
    """Put back the parameter tensors the forward used, if something swapped them since.

    torch.func.functional_call (and other reparametrisations) swap a module's parameters only
    for the duration of the forward; the recomputation in backward must use the same tensors.
    """
    swapped = []
    for m, name, p in slots:
        current = m._parameters.get(name)
        if current is not p:
            swapped.append((m, name, current))
            m._parameters[name] = p  # type: ignore[assignment]
    try:
        yield
    finally:
        for m, name, current in reversed(swapped):
            m._parameters[name] = current


# NOTE [ The last block's output, and when backward may overwrite it ]
# The node of the last block keeps the sequence's output for backward. It does not use
# ctx.save_for_backward: backward wants to rebuild the last block's input in that output's own
# memory when nothing else holds it (16 MiB less at revvgg's peak at batch 128), and with a
# saved-tensor hook installed (memprof's tracker, save_on_cpu) nothing tells from inside backward
# whether the user or another node still holds the tensor autograd saved. So the node keeps its
# own alias of the output (a detached view: no graph, so no reference cycle), passed through the
# saved-tensor hooks in force, exactly as save_for_backward would (an offloading hook offloads
# it; memprof sees it as saved). In backward, once the alias is unpacked and released, the
# output's memory is ours alone when its storage has no other user
# (torch._C._storage_Use_Count) and the graph is not being kept (retain_graph=False); then x is
# rebuilt in it. In every other case x gets memory of its own, as before. An in-place change of
# the output between forward and backward is an error, as it is for saved tensors.


class _SavedOutput:
    """The output of a chain's last block, kept for backward through the saved-tensor hooks."""

    __slots__ = ("_alias", "_packed", "_unpack", "_version")

    def __init__(self, y: torch.Tensor) -> None:
        alias = y.detach()
        self._version = y._version
        self._alias = weakref.ref(alias)
        hooks = _saved_tensor_hooks()
        if hooks is None:
            self._packed: Any = alias
            self._unpack: Any = None
        else:
            self._packed, self._unpack = hooks[0](alias), hooks[1]

    def unpack(self) -> torch.Tensor:
        y = self._packed if self._unpack is None else self._unpack(self._packed)
        if y is self._alias() and y._version != self._version:
            raise RuntimeError(
                "ReversibleSequence: the output of the sequence was modified in place after the "
                f"forward (version {self._version} -> {y._version}); backward needs it unchanged "
                "to rebuild the activations. Clone it before modifying it."
            )
        return y


def _read_saved_tensor_hooks() -> tuple[Any, Any] | None:
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None


# NOTE [ Keeping dynamo out of the read of the saved-tensor hooks, lazily ]
# Dynamo must not trace the read of the saved-tensor hooks (it breaks the graph around each
# reversible node anyway: NOTE in test_reversible). ``@torch.compiler.disable`` at import time
# imports torch._dynamo, about 1.5 s of every `import memprof` that never compiles anything.
# ``torch._disable_dynamo`` (the wrapper torch uses inside itself for the same reason) imports
# dynamo at its first call instead, and that call is only made once dynamo is loaded: nothing
# can be compiling before torch.compile has imported it.
_read_saved_tensor_hooks_outside_dynamo = torch._disable_dynamo(_read_saved_tensor_hooks)


def _saved_tensor_hooks() -> tuple[Any, Any] | None:
    """The (pack, unpack) hooks a tensor saved now would go through, or None."""
    if "torch._dynamo" in sys.modules:  # someone may be compiling (NOTE [ Keeping dynamo out ... ])
        return _read_saved_tensor_hooks_outside_dynamo()
    return _read_saved_tensor_hooks()


def _keep_graph() -> bool:
    """Whether the running backward keeps the graph (retain_graph=True); True when unknown."""
    fn = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if fn is None else bool(fn())


def _sole_holder(y: torch.Tensor) -> bool:
    """True when ``y`` is the only tensor on its storage and covers all of it."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None or not y.is_contiguous() or y.storage_offset() != 0:
        return False
    st = y.untyped_storage()
    # the Python storage object made here holds one reference of its own
    return st.nbytes() == y.numel() * y.element_size() and use_count(st._cdata) == 2


class _ReversibleBlockFunction(torch.autograd.Function):
    """One block of a reversible chain: runs it without a graph; backward rebuilds its input.

    In an inverse chain (``seq.inverse`` under autograd) the block's ``inverse`` runs instead,
    and backward rebuilds the inverse's input with the block's forward (``reverse_inverse``).
    """

    @staticmethod
    def forward(ctx: Any, node: _Node, *tensors: torch.Tensor) -> Any:  # type: ignore[override]
        chain, seq = node.chain, node.seq
        n_x, n_c = node.n_x, len(node.cond.tensors)
        x = unflatten(tensors[:n_x], node.x_spec)
        cond = tensors[n_x : n_x + n_c]
        params = tensors[n_x + n_c :]
        args, kwargs = node.cond.build(cond)
        block = seq.blocks[node.index]
        tape = RngTape(tensors[0], enabled=chain.preserve_rng_state)
        buffers = BufferTape()
        with buffers.record(block):
            y = seq._call_block(node.index, block, x, args, kwargs, tape, inverse=chain.inverse)
        y_leaves, node.y_spec = flatten(y)
        ctx.node, ctx.block, ctx.tape, ctx.buffers = node, block, tape, buffers
        ctx.cond = cond
        ctx.params = params
        ctx.versions = [t._version for t in (*cond, *params)]
        ctx.slots = _parameter_slots(block)
        ctx.is_last = node.position == chain.last
        ctx.output = [_SavedOutput(t) for t in y_leaves] if ctx.is_last else None
        return y_leaves[0] if node.y_spec is None else tuple(y_leaves)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grad_leaves: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        node: _Node = ctx.node
        chain = node.chain
        if ctx.is_last:
            saved: list[_SavedOutput] | None = ctx.output
            if saved is None:
                raise RuntimeError(
                    "ReversibleSequence: backward was called a second time through the same "
                    "forward, after its saved output had been freed. Call "
                    "backward(retain_graph=True) the first time to back-propagate twice."
                )
            y_leaves = [s.unpack() for s in saved]
            keep = _keep_graph()
            if not keep:
                ctx.output = saved = None
            owned = not keep and len(y_leaves) == 1 and _sole_holder(y_leaves[0])
        else:
            y_leaves, owned = chain.stash.pop(node.position, (None, False))  # type: ignore[assignment]
            if y_leaves is None:
                raise RuntimeError(
                    f"ReversibleSequence: block at position {node.position} received a gradient but "
                    "its output was not rebuilt by the block after it; the output of an inner "
                    "block of a reversible sequence cannot be used outside the sequence"
                )
        if any(t._version != v for t, v in zip((*ctx.cond, *ctx.params), ctx.versions)):
            raise RuntimeError(
                "ReversibleSequence: parameters or conditioning tensors were modified in place "
                "between forward and backward (e.g. optimizer.step() before backward); the rebuilt "
                "activations would be wrong. Run backward before changing them."
            )
        y = unflatten(y_leaves, node.y_spec)
        grad_y = unflatten(grad_leaves, node.y_spec)
        block = ctx.block
        cond_leaves = [leaf(c) if c.requires_grad else c for c in ctx.cond]
        args, kwargs = node.cond.build(cond_leaves)
        step = ReverseStep(
            ctx.tape,
            args,
            kwargs,
            [c for c, orig in zip(cond_leaves, ctx.cond) if orig.requires_grad],
            owned,
            f"block {node.index} ({type(block).__name__})",
        )
        with contextlib.ExitStack() as stack:
            stack.enter_context(replay_autocast(chain.autocast))
            stack.enter_context(_rebound_parameters(ctx.slots))
            stack.enter_context(ctx.buffers.standing_in())
            stack.enter_context(ctx.tape.replaying())
            if getattr(block, "records_rng", False):
                stack.enter_context(_tape_on(block, ctx.tape))
            if chain.inverse:
                method = block.reverse_inverse if isinstance(block, InvertibleModule) else None
                x, grad_x, pairs = (
                    method(y, grad_y, step) if method else reverse_inverse_by_recompute(block, y, grad_y, step)
                )
            else:
                method = block.reverse if isinstance(block, InvertibleModule) else None
                x, grad_x, pairs = method(y, grad_y, step) if method else reverse_by_recompute(block, y, grad_y, step)
        x_leaves = flatten(x)[0]
        if any(ctx.needs_input_grad[1 : 1 + node.n_x]) and node.position > 0:  # the chain's first input is nobody's output
            # x may be a view of y (ChannelZeroPad's inverse is a slice): then it is ours to
            # overwrite only if y was.
            shares = len(x_leaves) == 1 and x_leaves[0].untyped_storage()._cdata == y_leaves[0].untyped_storage()._cdata
            chain.stash[node.position - 1] = ([t.detach() for t in x_leaves], owned or not shares)
        del y, y_leaves
        grads: dict[int, torch.Tensor] = {}
        for t, g in pairs:
            if g is not None:
                grads[id(t)] = g if id(t) not in grads else grads[id(t)] + g
        cond_grads = [grads.get(id(c)) if orig.requires_grad else None for c, orig in zip(cond_leaves, ctx.cond)]
        param_grads = [grads.get(id(p)) for p in ctx.params]
        grad_x_leaves = flatten(grad_x)[0] if grad_x is not None else [None] * node.n_x
        grad_x_leaves = [g if need else None for g, need in zip(grad_x_leaves, ctx.needs_input_grad[1 : 1 + node.n_x])]
        return (None, *grad_x_leaves, *cond_grads, *param_grads)


@contextlib.contextmanager
def _tape_on(block: nn.Module, tape: RngTape) -> Iterator[None]:
    """The block's own RNG regions record on (or replay from) ``tape`` within."""
    block._memprof_tape = tape  # type: ignore[assignment]
    try:
        yield
    finally:
        block._memprof_tape = NULL_TAPE  # type: ignore[assignment]


# NOTE [ The outermost flag governs ]
# A ReversibleSequence nested in another one follows the outermost sequence: inside a
# reversible one its blocks join the outer chain (whatever the inner flag says), and inside one
# with reversible=False it runs under ordinary autograd too, so that `outer.reversible = False`
# gives the whole plain twin. The second is carried by a thread-local depth counter while an
# outer sequence runs its blocks plainly, so it reaches sequences nested at any depth, even
# inside other modules.

_plain = threading.local()


@contextlib.contextmanager
def _running_plainly() -> Iterator[None]:
    _plain.depth = getattr(_plain, "depth", 0) + 1
    try:
        yield
    finally:
        _plain.depth -= 1


def _inside_plain_sequence() -> bool:
    return getattr(_plain, "depth", 0) > 0


class ReversibleSequence(InvertibleModule):
    """A sequence of invertible blocks that can back-propagate without stored activations.

    With ``reversible=True`` (and grad enabled) the forward keeps no per-block activations;
    backward rebuilds each block's input from its output and back-propagates block by block
    (Gomez et al. 2017, Algorithm 1), so the memory autograd holds does not grow with depth.
    :meth:`inverse` under autograd does the same in the other direction. With
    ``reversible=False`` the same modules run under ordinary autograd: the baseline to compare
    against. The flag can be toggled at any time; the state dict is the same in both modes.
    Under ``torch.no_grad()`` both modes run a plain forward at no extra cost. A
    ReversibleSequence is itself invertible and may be nested in another one; the outermost
    one's ``reversible`` flag then governs the nested blocks (NOTE [ The outermost flag governs ]).

    The input is a tensor or a tuple of tensors (several streams; each block maps the tuple to a
    tuple). Extra arguments, ``seq(x, *args, **kwargs)``, are conditioning: they are passed to
    every block and by couplings to every F and G, and tensors among them get gradients exactly
    as in the plain twin.

    Args:
        blocks: invertible modules, each with ``forward`` and ``inverse`` (for instance
            :class:`AdditiveCoupling`, :class:`AffineCoupling`, :class:`InvertibleDownsample`,
            :class:`ChannelZeroPad`).
        reversible: rebuild activations in backward (True) or store them (False).
        preserve_rng_state: record the RNG state of blocks that draw random numbers so that their
            recomputation draws the same ones (costs memory only for such blocks).

    Raises:
        TypeError: if a block is not an ``nn.Module`` with an ``inverse`` method, naming its index.
    """

    def __init__(
        self, blocks: Iterable[nn.Module], reversible: bool = True, preserve_rng_state: bool = True
    ) -> None:
        super().__init__()
        blocks = list(blocks)
        for i, block in enumerate(blocks):
            if not isinstance(block, nn.Module) or not is_invertible(block):
                raise TypeError(
                    f"block {i} ({type(block).__name__}) is not invertible: every block of a "
                    "ReversibleSequence must be an nn.Module with an inverse() method, e.g. "
                    "AdditiveCoupling, InvertibleDownsample or ChannelZeroPad"
                )
        self.blocks = nn.ModuleList(blocks)
        self.reversible = reversible
        self.preserve_rng_state = preserve_rng_state
        self._memprof_chain: _Chain | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> nn.Module:
        return self.blocks[index]

    def _num_leaves(self) -> int:
        """Blocks in the chain this sequence starts, nested sequences walked through."""
        return sum(b._num_leaves() if isinstance(b, ReversibleSequence) else 1 for b in self.blocks)

    def _call_block(
        self,
        i: int,
        block: nn.Module,
        x: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        tape: RngTape = NULL_TAPE,
        inverse: bool = False,
    ) -> Any:
        """Run block i (or its inverse), recording its RNG use on ``tape``; errors name the block."""
        fn = block.inverse if inverse else block
        kwargs = kwargs or {}
        try:
            if getattr(block, "records_rng", False):
                with _tape_on(block, tape):
                    return fn(x, *args, **kwargs)
            with tape.region("block"):
                return fn(x, *args, **kwargs)
        except ValueError as exc:
            raise ValueError(
                f"block {i} ({type(block).__name__}) of the ReversibleSequence rejected its input "
                f"of shape {describe(x)}: {exc}"
            ) from exc

    def _run_chain(self, x: Any, chain: _Chain, cond: _Conditioning, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run every block as a node of ``chain``; nested sequences are walked through."""
        order = reversed(list(enumerate(self.blocks))) if chain.inverse else enumerate(self.blocks)
        for i, block in order:
            if isinstance(block, ReversibleSequence):
                block._memprof_chain = chain
                try:
                    x = block.inverse(x, *args, **kwargs) if chain.inverse else block(x, *args, **kwargs)
                finally:
                    block._memprof_chain = None
                continue
            position = chain.next_position
            chain.next_position += 1
            leaves, spec = flatten(x)
            node = _Node(chain, self, i, position, spec, len(leaves), cond)
            out = _ReversibleBlockFunction.apply(node, *leaves, *cond.tensors, *grad_params(block))
            x = unflatten([out] if node.y_spec is None else list(out), node.y_spec)
        return x

    def _run(self, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any], inverse: bool) -> Any:
        if self._memprof_chain is not None:  # nested in a reversible sequence's forward
            return self._run_chain(x, self._memprof_chain, _Conditioning(args, kwargs), args, kwargs)
        leaves, spec = flatten(x)
        x = unflatten([_float32_stream(t) for t in leaves], spec)
        cond = _Conditioning(args, kwargs)
        needs_grad = any(t.requires_grad for t in (*leaves, *cond.tensors)) or any(p.requires_grad for p in self.parameters())
        if (
            not self.reversible
            or _inside_plain_sequence()
            or not torch.is_grad_enabled()
            or not needs_grad
            or len(self.blocks) == 0
        ):
            order = reversed(list(enumerate(self.blocks))) if inverse else enumerate(self.blocks)
            like = leaves[0]
            with _running_plainly() if not self.reversible else contextlib.nullcontext():
                for i, block in order:
                    # the same RNG regions as the reversible mode (NOTE [ RNG state for recomputation ])
                    tape = RngTape(like, enabled=self.preserve_rng_state)
                    x = self._call_block(i, block, x, args, kwargs, tape, inverse=inverse)
            return x
        chain = _Chain(self._num_leaves(), self.preserve_rng_state, inverse=inverse)
        return self._run_chain(x, chain, cond, args, kwargs)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the blocks; ``args`` and ``kwargs`` (conditioning) are passed to every block."""
        if not isinstance(x, (torch.Tensor, tuple, list)):
            raise TypeError(f"ReversibleSequence takes a tensor or a tuple of tensors, got {type(x).__name__}")
        return self._run(x, args, kwargs, inverse=False)

    def inverse(self, y: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the blocks' inverses from last to first; under autograd, reversibly.

        With ``reversible=True`` and grad enabled only the result is kept for backward, as for
        the forward direction: backward rebuilds each inverse's input with the block's forward.
        """
        if not isinstance(y, (torch.Tensor, tuple, list)):
            raise TypeError(f"ReversibleSequence.inverse takes a tensor or a tuple of tensors, got {type(y).__name__}")
        return self._run(y, args, kwargs, inverse=True)

    def extra_repr(self) -> str:
        return f"reversible={self.reversible}"
