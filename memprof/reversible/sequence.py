"""ReversibleSequence: invertible blocks whose backward rebuilds activations instead of storing them."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._state import NULL_TAPE, RngTape, capture_autocast, frozen_batchnorm_stats, replay_autocast
from .base import InvertibleModule, grad_params, is_invertible, reverse_by_recompute

__all__ = ["ReversibleSequence"]

# NOTE [ What a reversible sequence stores, and what is freed when ]
# Forward (reversible=True, grad enabled): every block runs inside its own autograd Function
# node, under no_grad, so no block builds a graph and no block saves its input. Each node's
# output is the next node's input and is freed as soon as the next block has consumed it. Only
# the node of the last block saves anything: its output (which the next layer usually holds
# anyway, so deduplicated it often costs nothing). Besides it, each node's ctx holds an RngTape
# that is empty unless the block drew random numbers (NOTE [ RNG state for recomputation ]);
# the chain holds the autocast settings once.
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
    """What the nodes of one reversible forward share."""

    __slots__ = ("autocast", "last", "next_position", "preserve_rng_state", "stash")

    def __init__(self, num_blocks: int, preserve_rng_state: bool) -> None:
        self.autocast = capture_autocast()
        self.last = num_blocks - 1
        self.next_position = 0
        self.preserve_rng_state = preserve_rng_state
        #: position -> (the rebuilt output of the block there, whether nothing else holds it).
        self.stash: dict[int, tuple[torch.Tensor, bool]] = {}


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


@torch.compiler.disable  # dynamo breaks the graph around each node anyway (NOTE in test_reversible)
def _saved_tensor_hooks() -> tuple[Any, Any] | None:
    """The (pack, unpack) hooks a tensor saved now would go through, or None."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None


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
    """One block of a reversible chain: runs it without a graph; backward rebuilds its input."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        chain: _Chain,
        seq: ReversibleSequence,
        index: int,
        position: int,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        block = seq.blocks[index]
        tape = RngTape(x, enabled=chain.preserve_rng_state)
        y = seq._call_block(index, block, x, tape)
        ctx.chain, ctx.block, ctx.position, ctx.tape = chain, block, position, tape
        ctx.params = params
        ctx.versions = [p._version for p in params]
        ctx.slots = _parameter_slots(block)
        ctx.is_last = position == chain.last
        ctx.output = _SavedOutput(y) if ctx.is_last else None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        chain: _Chain = ctx.chain
        if ctx.is_last:
            saved: _SavedOutput | None = ctx.output
            if saved is None:
                raise RuntimeError(
                    "ReversibleSequence: backward was called a second time through the same "
                    "forward, after its saved output had been freed. Call "
                    "backward(retain_graph=True) the first time to back-propagate twice."
                )
            y = saved.unpack()
            keep = _keep_graph()
            if not keep:
                ctx.output = saved = None
            owned = not keep and _sole_holder(y)
        else:
            y, owned = chain.stash.pop(ctx.position, (None, False))
            if y is None:
                raise RuntimeError(
                    f"ReversibleSequence: block at position {ctx.position} received a gradient but "
                    "its output was not rebuilt by the block after it; the output of an inner "
                    "block of a reversible sequence cannot be used outside the sequence"
                )
        if any(p._version != v for p, v in zip(ctx.params, ctx.versions)):
            raise RuntimeError(
                "ReversibleSequence: parameters were modified in place between forward and "
                "backward (e.g. optimizer.step() before backward); the rebuilt activations would "
                "be wrong. Run backward before changing the parameters."
            )
        block = ctx.block
        with replay_autocast(chain.autocast), _rebound_parameters(ctx.slots), frozen_batchnorm_stats(block):
            if isinstance(block, InvertibleModule):
                x, grad_x, pairs = block.reverse(y, grad_y, ctx.tape, y_owned=owned)
            else:
                x, grad_x, pairs = reverse_by_recompute(block, y, grad_y, ctx.tape)
        if ctx.needs_input_grad[0] and ctx.position > 0:  # the chain's first input is nobody's output
            # x may be a view of y (ChannelZeroPad's inverse is a slice): then it is ours to
            # overwrite only if y was.
            shares = x.untyped_storage()._cdata == y.untyped_storage()._cdata
            chain.stash[ctx.position - 1] = (x.detach(), owned or not shares)
        del y
        grads: dict[int, torch.Tensor] = {}
        for p, g in pairs:
            if g is not None:
                grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g
        param_grads = [grads.get(id(p)) for p in ctx.params]
        return (grad_x if ctx.needs_input_grad[0] else None, None, None, None, None, *param_grads)


class ReversibleSequence(InvertibleModule):
    """A sequence of invertible blocks that can back-propagate without stored activations.

    With ``reversible=True`` (and grad enabled) the forward keeps no per-block activations;
    backward rebuilds each block's input from its output and back-propagates block by block
    (Gomez et al. 2017, Algorithm 1), so the memory autograd holds does not grow with depth.
    With ``reversible=False`` the same modules run under ordinary autograd: the baseline to
    compare against. The flag can be toggled at any time; the state dict is the same in both
    modes. Under ``torch.no_grad()`` both modes run a plain forward at no extra cost. A
    ReversibleSequence is itself invertible and may be nested in another one; the outermost
    one's ``reversible`` flag then governs the nested blocks.

    Args:
        blocks: invertible modules, each with ``forward`` and ``inverse`` (for instance
            :class:`AdditiveCoupling`, :class:`InvertibleDownsample`, :class:`ChannelZeroPad`).
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

    def _call_block(self, i: int, block: nn.Module, x: torch.Tensor, tape: RngTape = NULL_TAPE) -> torch.Tensor:
        """Run block i, recording its RNG use on ``tape``; shape errors name the block index."""
        try:
            if getattr(block, "records_rng", False):
                block._memprof_tape = tape  # type: ignore[assignment]
                try:
                    return block(x)
                finally:
                    block._memprof_tape = NULL_TAPE  # type: ignore[assignment]
            with tape.record("block"):
                return block(x)
        except ValueError as exc:
            raise ValueError(
                f"block {i} ({type(block).__name__}) of the ReversibleSequence rejected its input "
                f"of shape {tuple(x.shape)}: {exc}"
            ) from exc

    def _forward_chain(self, x: torch.Tensor, chain: _Chain) -> torch.Tensor:
        """Run every block as a node of ``chain``; nested sequences are walked through."""
        for i, block in enumerate(self.blocks):
            if isinstance(block, ReversibleSequence):
                block._memprof_chain = chain
                try:
                    x = block(x)
                finally:
                    block._memprof_chain = None
                continue
            position = chain.next_position
            chain.next_position += 1
            x = _ReversibleBlockFunction.apply(x, chain, self, i, position, *grad_params(block))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"ReversibleSequence takes one tensor, got {type(x).__name__}")
        if self._memprof_chain is not None:  # nested in a reversible sequence's forward
            return self._forward_chain(x, self._memprof_chain)
        x = _float32_stream(x)
        if (
            not self.reversible
            or not torch.is_grad_enabled()
            or not (x.requires_grad or grad_params(self))
            or len(self.blocks) == 0
        ):
            for i, block in enumerate(self.blocks):
                x = self._call_block(i, block, x)
            return x
        return self._forward_chain(x, _Chain(self._num_leaves(), self.preserve_rng_state))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Run the blocks' inverses from last to first."""
        for block in reversed(self.blocks):
            y = block.inverse(y)  # type: ignore[operator]
        return y

    def extra_repr(self) -> str:
        return f"reversible={self.reversible}"
