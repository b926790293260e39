"""``profile_step`` and ``fit_batch_size``: the memory of one training step, measured or estimated.

:func:`check_step_args` checks every argument; :func:`run_profile_step` records the step
(:func:`memprof.recording.runner.record_step`), aggregates it
(:func:`memprof.aggregation.step.build_profile`) and returns the renderable
:class:`~memprof.rendering.step.StepProfile`. :func:`fit_batch_size` searches the batch
sizes with estimates (:func:`memprof.aggregation.fit.search_batch_size`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..aggregation.fit import fitted_figure, search_batch_size
from ..aggregation.step import build_profile
from ..recording.runner import record_step
from ..rendering.step import StepProfile
from ..units import format_bytes
from ..validation import (
    BATCH_SIZE_LIMIT,
    UsageError,
    check_device,
    check_optimizer,
    check_positive_int,
    parse_dtype,
)
from ..vocabulary import Mode

__all__ = ["StepArgs", "check_step_args", "fit_batch_size", "profile_step", "run_profile_step"]


@dataclass(frozen=True)
class StepArgs:
    """Checked arguments of :func:`profile_step`."""

    batch_size: int
    input_shape: tuple[int, ...]
    optimizer: str
    dtype: torch.dtype
    device: torch.device
    estimate: bool
    expandable_segments: bool = False


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


def run_profile_step(model: nn.Module, args: StepArgs, *, name: str | None = None, seed: int = 0) -> StepProfile:
    """The profile for checked arguments (:func:`check_step_args`); nothing is checked again.

    Raises:
        UsageError: if ``model`` is not an ``nn.Module``, or rejects the input.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"expected an nn.Module, got {type(model).__name__}")
    record = record_step(model, args.batch_size, args.input_shape, optimizer=args.optimizer, dtype=args.dtype,
                         device=args.device, estimate=args.estimate, seed=seed,
                         expandable_segments=args.expandable_segments)
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
    expandable_segments: bool = False,
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
        expandable_segments: a CUDA estimate models ``expandable_segments:True``.

    Returns:
        The :class:`~memprof.rendering.step.StepProfile`.

    Raises:
        UsageError: for a bad argument, or an input shape the model rejects.
    """
    args = check_step_args(batch_size, input_shape, optimizer, dtype, device, estimate)
    if expandable_segments:
        args = replace(args, expandable_segments=True)
    return run_profile_step(model, args, name=name, seed=seed)


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
    expandable_segments: bool = False,
) -> tuple[int, StepProfile]:
    """The largest batch size whose estimated step fits ``memory`` bytes.

    Every probe is an estimate (FakeTensorMode: no memory); the search is
    :func:`memprof.aggregation.fit.search_batch_size` (NOTE [ Fitting the batch size ]). The
    figure held to the budget (:func:`memprof.aggregation.fit.fitted_figure`): on the CPU the
    estimated allocator peak (tensors and kernel scratch), on CUDA the predicted
    ``max_memory_reserved``.

    Args:
        model: the model.
        memory: the budget in bytes.
        input_shape: shape of one sample.
        optimizer: as for :func:`profile_step`.
        dtype: as for :func:`profile_step`.
        device: ``"cuda"`` applies the caching allocator model.
        name: the model name shown.
        max_batch_size: never probe above this.
        expandable_segments: on CUDA, model ``expandable_segments:True``.

    Returns:
        ``(batch_size, profile at that size)``.

    Raises:
        UsageError: for a bad argument, or a budget below what batch 1 needs ("even batch 1
            needs ...").
    """
    memory = check_positive_int("memory budget (bytes)", memory)
    base = check_step_args(1, input_shape, optimizer, dtype, device, True)
    probes: dict[int, StepProfile] = {}

    def peak(b: int) -> int:
        if b not in probes:
            args = StepArgs(b, base.input_shape, base.optimizer, base.dtype, base.device, True, expandable_segments)
            probes[b] = run_profile_step(model, args, name=name)
        return fitted_figure(probes[b])[1]

    batch = search_batch_size(peak, memory, max_batch_size)
    if batch == 0:
        what, need = fitted_figure(probes[1])
        raise UsageError(f"even batch 1 needs {format_bytes(need, 'MiB')} ({what}), more than the budget "
                         f"{format_bytes(memory, 'MiB')} ({memory} bytes)")
    return batch, probes[batch]
