"""ReversibleSequence: invertible blocks whose backward rebuilds activations instead of storing them."""

from __future__ import annotations

from collections.abc import Iterable
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
# The sequence's input is not saved: it is rebuilt, up to floating-point rounding that grows
# slowly with depth (benchmarks/reconstruction_error.py measures it). Parameters changed
# in place between forward and backward would make the rebuilt activations wrong, so their
# version counters are checked and a change is an error, not silent garbage. A second backward
# without retain_graph fails with autograd's own error about freed saved tensors; with
# retain_graph=True it recomputes and gives the same gradients again.


def _describe(block: nn.Module) -> str:
    return type(block).__name__


class _ReversibleFunction(torch.autograd.Function):
    """Runs the blocks without a graph; backward rebuilds inputs block by block."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, seq: ReversibleSequence, *params: torch.Tensor) -> torch.Tensor:
        ctx.seq = seq
        ctx.autocast = capture_autocast()
        ctx.params = params
        ctx.versions = [p._version for p in params]
        tapes: list[RngTape] = []
        for i, block in enumerate(seq.blocks):
            tape = RngTape(x, enabled=seq.preserve_rng_state)
            x = seq._call_block(i, block, x, tape)
            tapes.append(tape)
        ctx.tapes = tapes
        ctx.save_for_backward(x)
        return x

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
        seq: ReversibleSequence = ctx.seq
        if any(p._version != v for p, v in zip(ctx.params, ctx.versions)):
            raise RuntimeError(
                "ReversibleSequence: parameters were modified in place between forward and "
                "backward (e.g. optimizer.step() before backward); the rebuilt activations would "
                "be wrong. Run backward before changing the parameters."
            )
        grads: dict[int, torch.Tensor] = {}
        with replay_autocast(ctx.autocast):
            for i in range(len(seq.blocks) - 1, -1, -1):
                block = seq.blocks[i]
                with frozen_batchnorm_stats(block):
                    y, grad_y, pairs = seq._reverse_block(block, y, grad_y, ctx.tapes[i])
                for p, g in pairs:
                    if g is None:
                        continue
                    key = id(p)
                    grads[key] = g if key not in grads else grads[key] + g
        param_grads = [grads.get(id(p)) for p in ctx.params]
        grad_x = grad_y if ctx.needs_input_grad[0] else None
        return (grad_x, None, *param_grads)


class ReversibleSequence(nn.Module):
    """A sequence of invertible blocks that can back-propagate without stored activations.

    With ``reversible=True`` (and grad enabled) the forward keeps no per-block activations;
    backward rebuilds each block's input from its output and back-propagates block by block
    (Gomez et al. 2017, Algorithm 1), so the memory autograd holds does not grow with depth.
    With ``reversible=False`` the same modules run under ordinary autograd: the baseline to
    compare against. The flag can be toggled at any time; the state dict is the same in both
    modes. Under ``torch.no_grad()`` both modes run a plain forward at no extra cost.

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

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> nn.Module:
        return self.blocks[index]

    def _grad_params(self) -> list[nn.Parameter]:
        return grad_params(self)

    def _call_block(self, i: int, block: nn.Module, x: torch.Tensor, tape: RngTape = NULL_TAPE) -> torch.Tensor:
        """Run block i, recording RNG use on ``tape``; shape errors name the block index."""
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
                f"block {i} ({_describe(block)}) of the ReversibleSequence rejected its input of "
                f"shape {tuple(x.shape)}: {exc}"
            ) from exc

    @staticmethod
    def _reverse_block(
        block: nn.Module, y: torch.Tensor, grad_y: torch.Tensor, tape: RngTape
    ) -> tuple[torch.Tensor, torch.Tensor | None, ParamGrads]:
        if isinstance(block, InvertibleModule):
            return block.reverse(y, grad_y, tape)
        return reverse_by_recompute(block, y, grad_y, tape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"ReversibleSequence takes one tensor, got {type(x).__name__}")
        params = self._grad_params()
        if (
            not self.reversible
            or not torch.is_grad_enabled()
            or not (x.requires_grad or params)
            or len(self.blocks) == 0
        ):
            for i, block in enumerate(self.blocks):
                x = self._call_block(i, block, x)
            return x
        return _ReversibleFunction.apply(x, self, *params)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Run the blocks' inverses from last to first."""
        for block in reversed(self.blocks):
            y = block.inverse(y)  # type: ignore[operator]
        return y

    def extra_repr(self) -> str:
        return f"reversible={self.reversible}"
