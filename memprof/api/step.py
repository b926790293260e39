"""``profile_step`` and ``fit_batch_size``: the memory of one training step, measured or estimated.

:func:`check_step_args` checks every argument; :func:`run_profile_step` records the step
(:func:`memprof.recording.runner.record_step`), aggregates it
(:func:`memprof.aggregation.step.build_profile`) and returns the renderable
:class:`~memprof.rendering.step.StepProfile`. :func:`fit_batch_size` searches the batch
sizes with estimates (:func:`memprof.aggregation.fit.search_batch_size`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..aggregation.fit import search_batch_size
from ..aggregation.step import build_profile
from ..recording.runner import record_step
from ..rendering.fit import BatchFit
from ..rendering.step import StepProfile
from ..validation import (
    BATCH_SIZE_LIMIT,
    UsageError,
    check_device,
    check_optimizer,
    check_positive_int,
    parse_dtype,
)
from ..vocabulary import Mode, dtype_name

__all__ = ["StepArgs", "check_step_args", "fit_batch", "fit_batch_size", "profile_step", "run_profile_step"]


@dataclass(frozen=True)
class StepArgs:
    """Checked arguments of :func:`profile_step`."""

    batch_size: int
    input_shape: tuple[int, ...]
    optimizer: str
    dtype: torch.dtype
    device: torch.device
    estimate: bool


def check_step_args(
    batch_size: Any, input_shape: Any, optimizer: Any = "sgd", dtype: Any = "float32", device: Any = "cpu",
    estimate: bool = False,
) -> StepArgs:
    """All argument checks of :func:`profile_step` in one place, before any work.

    Raises:
        UsageError: naming the bad value and the allowed ones.
    """
    batch_size = check_positive_int("batch size", batch_size)
    if input_shape is None or len(input_shape) == 0:
        raise UsageError("input shape is required for a model that is not registered, e.g. --input-shape 3,32,32")
    shape = tuple(check_positive_int("input shape dimension", d) for d in input_shape)
    check_optimizer(optimizer)
    return StepArgs(batch_size, shape, optimizer, parse_dtype(dtype), check_device(device, needs_cuda_here=not estimate),
                    bool(estimate))


def run_profile_step(model: nn.Module, args: StepArgs, *, name: str | None = None, seed: int = 0,
                     loss_fn: Callable[[Any], torch.Tensor] | None = None) -> StepProfile:
    """The profile for checked arguments (:func:`check_step_args`); nothing is checked again.

    Raises:
        UsageError: if ``model`` is not an ``nn.Module``, or rejects the input.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"expected an nn.Module, got {type(model).__name__}")
    record = record_step(model, args.batch_size, args.input_shape, optimizer=args.optimizer, dtype=args.dtype,
                         device=args.device, estimate=args.estimate, seed=seed, loss_fn=loss_fn)
    profile = StepProfile.from_data(build_profile(
        record, name=name or type(model).__name__, batch_size=args.batch_size, input_shape=args.input_shape,
        device=args.device, dtype=args.dtype, optimizer=args.optimizer,
        mode=Mode.ESTIMATED if args.estimate else Mode.MEASURED,
    ))
    if record.traced_on is not None and record.traced_on != args.device and args.device.type == "cuda":
        profile.notes.append("no GPU here: the step was traced with CPU kernels (NOTE [ CUDA estimates without a GPU ])")
    return profile


def profile_step(
    model: nn.Module,
    batch_size: int = 32,
    input_shape: Sequence[int] | None = None,
    *,
    optimizer: str = "sgd",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    estimate: bool = False,
    name: str | None = None,
    seed: int = 0,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
) -> StepProfile:
    """Measure (or estimate) the memory of one steady-state training step.

    The model is not modified: the step runs on a copy (a fake copy when estimating).

    Args:
        model: any ``nn.Module`` taking one tensor of shape ``(batch_size, *input_shape)``.
        batch_size: samples per step.
        input_shape: shape of one sample (e.g. ``(3, 32, 32)``).
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``.
        dtype: ``float32``, ``bfloat16`` or ``float16`` for parameters and inputs.
        device: ``cpu`` or ``cuda`` (a CUDA estimate needs no GPU).
        estimate: run under FakeTensorMode instead of allocating.
        name: the model name shown (default: the class name).
        seed: seeds the input batch and targets.
        loss_fn: ``loss_fn(output) -> scalar tensor``, the loss of the step; by default the loss is
            chosen by name and reported (NOTE [ Which output the loss is taken of ] in
            :mod:`memprof.recording.runner`): cross-entropy of the ``logits`` or of a lone tensor.

    Returns:
        The :class:`~memprof.rendering.step.StepProfile`; its ``loss`` says what the loss was.

    Raises:
        UsageError: for a bad argument, or an input shape the model rejects.
    """
    args = check_step_args(batch_size, input_shape, optimizer, dtype, device, estimate)
    return run_profile_step(model, args, name=name, seed=seed, loss_fn=loss_fn)


def fit_batch_size(
    model: nn.Module,
    memory: int,
    input_shape: Sequence[int],
    *,
    optimizer: str = "sgd",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    name: str | None = None,
    max_batch_size: int = BATCH_SIZE_LIMIT,
) -> tuple[int, StepProfile | None]:
    """The largest batch size whose estimated step peak fits ``memory`` bytes.

    Every probe is an estimate (FakeTensorMode: no memory); the search is
    :func:`memprof.aggregation.fit.search_batch_size` (NOTE [ Fitting the batch size ]).
    :func:`fit_batch` returns the same with what the search saw (where it started, its cap).

    Args:
        model: the model.
        memory: the budget in bytes.
        input_shape: shape of one sample.
        optimizer: as for :func:`profile_step`.
        dtype: as for :func:`profile_step`.
        device: ``"cuda"`` applies the caching allocator model.
        name: the model name shown.
        max_batch_size: never probe above this.

    Returns:
        ``(batch_size, profile at that size)``; ``(0, None)`` when not even the smallest batch fits.

    Raises:
        UsageError: for a bad argument, or a model that rejects every batch size tried.
    """
    found = fit_batch(model, memory, input_shape, optimizer=optimizer, dtype=dtype, device=device, name=name,
                      max_batch_size=max_batch_size)
    return found.batch_size, found.profile


#: Batch sizes tried, in order, for the smallest one a model accepts (BatchNorm rejects 1).
_FIRST_BATCHES = (1, 2, 3, 4, 8, 16, 32, 64)


def fit_batch(
    model: nn.Module,
    memory: int,
    input_shape: Sequence[int],
    *,
    optimizer: str = "sgd",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    name: str | None = None,
    max_batch_size: int = BATCH_SIZE_LIMIT,
) -> BatchFit:
    """:func:`fit_batch_size`, returning the :class:`~memprof.rendering.fit.BatchFit` with what the search saw.

    The search starts at the smallest batch size the model accepts (a model with BatchNorm
    rejects batch 1 in training mode), says so, and says when it stopped at ``max_batch_size``.

    Raises:
        UsageError: for a bad argument, or a model that rejects every batch size of ``_FIRST_BATCHES``.
    """
    memory = check_positive_int("memory budget (bytes)", memory)
    base = check_step_args(1, input_shape, optimizer, dtype, device, True)
    max_batch_size = check_positive_int("max batch size", max_batch_size)
    probes: dict[int, StepProfile] = {}
    label = name or type(model).__name__

    def peak(b: int) -> int:
        if b not in probes:
            args = StepArgs(b, base.input_shape, base.optimizer, base.dtype, base.device, True)
            probes[b] = run_profile_step(model, args, name=label)
        return probes[b].peak_bytes

    start, rejected, first_error = 0, "", None
    for b in (b for b in _FIRST_BATCHES if b <= max_batch_size):
        try:
            peak(b)
        except UsageError as exc:
            if not str(exc).startswith("the model rejects"):
                raise
            first_error = first_error or exc
            rejected = rejected or str(exc).split(": ", 1)[-1]
            continue
        start = b
        break
    if not start:
        raise first_error or UsageError(f"no batch size up to {max_batch_size} to try")
    batch = search_batch_size(peak, memory, max_batch_size, start=start)
    return BatchFit(label, memory, str(base.device), dtype_name(base.dtype), base.optimizer, batch,
                    probes.get(batch) if batch else None, smallest_batch_size=start,
                    smallest_peak_bytes=probes[start].peak_bytes, rejected=rejected if start > 1 else "",
                    max_batch_size=max_batch_size, capped=batch == max_batch_size)
