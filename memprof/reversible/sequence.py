"""ReversibleSequence: invertible blocks whose backward rebuilds activations instead of storing them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._state import NULL_TAPE, RngTape, capture_autocast, frozen_batchnorm_stats, replay_autocast
from .base import InvertibleModule, ParamGrads, grad_params, is_invertible, reverse_by_recompute

__all__ = ["ReversibleSequence"]

# NOTE [ What a reversible sequence stores, and what is freed when ]
# Forward (reversible=True, grad enabled): the blocks run one after another under no_grad, so
# no block builds a graph and every intermediate output is freed as soon as the next block has
# consumed it. The autograd Function saves exactly one tensor: the sequence's final output
# (which the next layer usually holds anyway, so deduplicated it often costs nothing). Besides
# it, ctx holds per block an RngTape that is empty unless the block drew random numbers
# (NOTE [ RNG state for recomputation ]) and the autocast settings. The parameters are passed
# to the Function as inputs, not saved: their gradients are returned from backward and
# accumulated by autograd itself, so hooks, DistributedDataParallel and torch.autograd.grad see
# them exactly as for an ordinary layer (no "marked ready twice", no find_unused_parameters).
#
# Backward walks the blocks from last to first. For block i it holds y_i and dL/dy_i, rebuilds
# x_i = y_{i-1} from y_i (an AdditiveCoupling evaluates G(y1) and F(x2) once, with grad, and
# uses each both to invert and to differentiate), computes dL/dx_i and the block's parameter
# gradients, then drops y_i, dL/dy_i and the block's temporary graph before moving on. At any
# moment only one block's recomputation graph is alive, so memory does not grow with depth.
# The parameter gradients are summed over blocks (a parameter shared by several blocks gets the
# sum) and handed to autograd at the end.
#
# A ReversibleSequence may itself be a block of another one (to group stages readably). The
# outer sequence then drives the inner blocks' reverse steps directly, with one tape per inner
# block, so nesting costs no extra recomputation and only the outermost output is saved.
#
# The sequence's input is not saved: it is rebuilt, up to floating-point rounding that grows
# slowly with depth (benchmarks/reconstruction_error.py measures it). Parameters changed
# in place between forward and backward would make the rebuilt activations wrong, so their
# version counters are checked and a change is an error, not silent garbage. A second backward
# without retain_graph fails with a clear error about the freed output; with retain_graph=True
# it recomputes and gives the same gradients again.


def _parameter_slots(seq: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Where each parameter used by this forward lives: (module, attribute name, tensor)."""
    return [
        (m, name, p)
        for m in seq.modules()
        for name, p in m._parameters.items()
        if p is not None
    ]


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


class _ReversibleFunction(torch.autograd.Function):
    """Runs the blocks without a graph; backward rebuilds inputs block by block."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, seq: ReversibleSequence, *params: torch.Tensor) -> torch.Tensor:
        ctx.seq = seq
        ctx.autocast = capture_autocast()
        ctx.params = params
        ctx.versions = [p._version for p in params]
        ctx.slots = _parameter_slots(seq)
        tape = RngTape(x, enabled=seq.preserve_rng_state)
        y = seq._forward_blocks(x, tape)
        ctx.tape = tape
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        try:
            (y,) = ctx.saved_tensors
        except RuntimeError as exc:
            raise RuntimeError(
                "ReversibleSequence: backward was called a second time through the same forward, "
                "after its saved output had been freed. Call backward(retain_graph=True) the "
                "first time to back-propagate twice."
            ) from exc
        if any(p._version != v for p, v in zip(ctx.params, ctx.versions)):
            raise RuntimeError(
                "ReversibleSequence: parameters were modified in place between forward and "
                "backward (e.g. optimizer.step() before backward); the rebuilt activations would "
                "be wrong. Run backward before changing the parameters."
            )
        with replay_autocast(ctx.autocast), _rebound_parameters(ctx.slots):
            _, grad_x, pairs = ctx.seq._reverse_blocks(y, grad_y, ctx.tape)
        grads: dict[int, torch.Tensor] = {}
        for p, g in pairs:
            if g is not None:
                grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g
        param_grads = [grads.get(id(p)) for p in ctx.params]
        return (grad_x if ctx.needs_input_grad[0] else None, None, *param_grads)


class ReversibleSequence(InvertibleModule):
    """A sequence of invertible blocks that can back-propagate without stored activations.

    With ``reversible=True`` (and grad enabled) the forward keeps no per-block activations;
    backward rebuilds each block's input from its output and back-propagates block by block
    (Gomez et al. 2017, Algorithm 1), so the memory autograd holds does not grow with depth.
    With ``reversible=False`` the same modules run under ordinary autograd: the baseline to
    compare against. The flag can be toggled at any time; the state dict is the same in both
    modes. Under ``torch.no_grad()`` both modes run a plain forward at no extra cost. A
    ReversibleSequence is itself invertible and may be nested in another one.

    Args:
        blocks: invertible modules, each with ``forward`` and ``inverse`` (for instance
            :class:`AdditiveCoupling`, :class:`InvertibleDownsample`, :class:`ChannelZeroPad`).
        reversible: rebuild activations in backward (True) or store them (False).
        preserve_rng_state: record the RNG state of blocks that draw random numbers so that their
            recomputation draws the same ones (costs memory only for such blocks).

    Raises:
        TypeError: if a block is not an ``nn.Module`` with an ``inverse`` method, naming its index.
    """

    records_rng = True

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
        self._memprof_tape: RngTape = NULL_TAPE

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> nn.Module:
        return self.blocks[index]

    def _call_block(self, i: int, block: nn.Module, x: torch.Tensor, tape: RngTape) -> torch.Tensor:
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

    def _forward_blocks(self, x: torch.Tensor, tape: RngTape) -> torch.Tensor:
        """Run every block, each with a child of ``tape`` (or none when not recording)."""
        for i, block in enumerate(self.blocks):
            x = self._call_block(i, block, x, tape.child(x) if tape is not NULL_TAPE else NULL_TAPE)
        return x

    def _reverse_blocks(
        self, y: torch.Tensor, grad_y: torch.Tensor, tape: RngTape
    ) -> tuple[torch.Tensor, torch.Tensor | None, ParamGrads]:
        """Rebuild the input and its gradient from the output, last block first."""
        pairs: list[tuple[nn.Parameter, torch.Tensor | None]] = []
        for i in range(len(self.blocks) - 1, -1, -1):
            block, child = self.blocks[i], tape.children[i]
            with frozen_batchnorm_stats(block):
                if isinstance(block, InvertibleModule):
                    y, grad_y, block_pairs = block.reverse(y, grad_y, child)  # type: ignore[assignment]
                else:
                    y, grad_y, block_pairs = reverse_by_recompute(block, y, grad_y, child)  # type: ignore[assignment]
            pairs.extend(block_pairs)
        return y, grad_y, pairs

    def reverse(
        self, y: torch.Tensor, grad_y: torch.Tensor, tape: RngTape
    ) -> tuple[torch.Tensor, torch.Tensor | None, ParamGrads]:
        """Reverse step when nested in another ReversibleSequence."""
        return self._reverse_blocks(y, grad_y, tape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"ReversibleSequence takes one tensor, got {type(x).__name__}")
        if self._memprof_tape is not NULL_TAPE:
            # Nested in a recording (reversible) outer sequence: the outer one drives backward.
            return self._forward_blocks(x, self._memprof_tape)
        params = grad_params(self)
        if (
            not self.reversible
            or not torch.is_grad_enabled()
            or not (x.requires_grad or params)
            or len(self.blocks) == 0
        ):
            return self._forward_blocks(x, NULL_TAPE)
        return _ReversibleFunction.apply(x, self, *params)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Run the blocks' inverses from last to first."""
        for block in reversed(self.blocks):
            y = block.inverse(y)  # type: ignore[operator]
        return y

    def extra_repr(self) -> str:
        return f"reversible={self.reversible}"
