"""check_invertible: catch a block whose ``inverse`` does not undo its ``forward`` before it trains."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._state import NULL_TAPE, RngTape
from .base import describe, flatten, is_invertible

__all__ = ["InvertibilityReport", "check_invertible"]


@dataclass(frozen=True)
class InvertibilityReport:
    """How well ``inverse(forward(x))`` gives x back.

    Attributes:
        max_abs_error: max |inverse(forward(x)) - x| over all elements (of the worst block).
        rel_error: that error divided by max |x| (of that block's input).
        block: index of the worst block of a ReversibleSequence, else None.
        atol, rtol: the tolerance checked: ``max_abs_error <= atol + rtol * max|x|``.
        ok: whether the tolerance holds.
    """

    max_abs_error: float
    rel_error: float
    block: int | None
    atol: float
    rtol: float
    ok: bool


@contextlib.contextmanager
def _state_kept(module: nn.Module, like: torch.Tensor) -> Iterator[None]:
    """Within, the module's buffers and the RNG streams may change; both are put back after."""
    saved = [(m, name, b.clone()) for m in module.modules() for name, b in m._buffers.items() if b is not None]
    devices = [like.device] if like.is_cuda else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for m, name, b in saved:
            current = m._buffers.get(name)
            if current is not None and current.shape == b.shape:
                with torch.no_grad():
                    current.copy_(b)
            else:
                m._buffers[name] = b


def _round_trip(block: nn.Module, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """(forward(x), inverse(forward(x))), with the RNG of the forward replayed for the inverse,
    as the reversible backward does (NOTE [ RNG state for recomputation ])."""
    tape = RngTape(flatten(x)[0][0])
    own = getattr(block, "records_rng", False)
    if own:
        block._memprof_tape = tape
    try:
        with tape.region("block"):
            y = block(x, *args, **kwargs)
        with tape.replaying(), tape.region("block"):
            back = block.inverse(y, *args, **kwargs)
    finally:
        if own:
            block._memprof_tape = NULL_TAPE
    return y, back


def _errors(x: Any, back: Any) -> tuple[float, float]:
    xs, bs = flatten(x)[0], flatten(back)[0]
    if len(xs) != len(bs) or any(a.shape != b.shape for a, b in zip(xs, bs)):
        raise ValueError(f"inverse returned shape {describe(back)} for an input of shape {describe(x)}")
    err = max(float((b.double() - a.double()).abs().max()) if a.numel() else 0.0 for a, b in zip(xs, bs))
    scale = max(float(a.double().abs().max()) if a.numel() else 0.0 for a in xs)
    return err, scale


def check_invertible(
    module: nn.Module,
    x: Any,
    *args: Any,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    raise_error: bool = True,
    **kwargs: Any,
) -> InvertibilityReport:
    """Run ``module`` forward and its ``inverse`` on ``x`` and report the reconstruction error.

    For a :class:`ReversibleSequence` every block is checked on the input it really receives,
    and the worst block is named. Randomness used by the forward is replayed for the inverse (as
    in the reversible backward); the module's buffers and the RNG streams are left as they were,
    and nothing is differentiated. Use it on a user-written block before training with it: a
    wrong ``inverse`` would otherwise give wrong weight gradients without any error.

    Args:
        module: an invertible module (has ``inverse``).
        x: an input: a tensor or a tuple of tensors.
        *args, **kwargs: conditioning passed to forward and inverse.
        atol, rtol: the tolerance, ``max|inverse(forward(x)) - x| <= atol + rtol * max|x|``.
        raise_error: raise when the tolerance fails (default), else only report.

    Returns:
        An :class:`InvertibilityReport`.

    Raises:
        TypeError: if ``module`` has no ``inverse``.
        ValueError: if the reconstruction error exceeds the tolerance (with ``raise_error``), or
            the inverse returns a different shape.
    """
    from .sequence import ReversibleSequence

    if not is_invertible(module):
        raise TypeError(f"{type(module).__name__} has no inverse() to check")
    if atol < 0 or rtol < 0:
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    blocks = list(enumerate(module.blocks)) if isinstance(module, ReversibleSequence) else [(None, module)]
    worst: tuple[float, float, float, int | None] | None = None  # (excess over tolerance, err, scale, block)
    with torch.no_grad(), _state_kept(module, flatten(x)[0][0]):
        for index, block in blocks:
            y, back = _round_trip(block, x, args, kwargs)
            err, scale = _errors(x, back)
            excess = err - (atol + rtol * scale)
            if worst is None or excess > worst[0]:
                worst = (excess, err, scale, index)
            x = y
    if worst is None:  # an empty sequence is the identity
        return InvertibilityReport(0.0, 0.0, None, atol, rtol, True)
    _, err, scale, index = worst
    ok = err <= atol + rtol * scale
    report = InvertibilityReport(err, err / scale if scale > 0 else err, index, atol, rtol, ok)
    if raise_error and not ok:
        where = f"block {index} ({type(module.blocks[index]).__name__}) of the sequence" if index is not None else type(module).__name__
        raise ValueError(
            f"{where}: inverse(forward(x)) differs from x by up to {err:.3g} (max|x| = {scale:.3g}), "
            f"above the tolerance atol={atol:g} + rtol={rtol:g} * max|x|; its inverse() does not undo "
            "its forward(), and a reversible backward through it would give wrong gradients"
        )
    return report
