"""``profile_step`` and ``fit_batch_size``: the memory of one training step, measured or estimated.

:func:`check_step_args` checks every argument; :func:`run_profile_step` records the step
(:func:`memprof.recording.runner.record_step`), aggregates it
(:func:`memprof.aggregation.step.build_profile`) and returns the renderable
:class:`~memprof.rendering.step.StepProfile`. :func:`fit_batch_size` searches the batch
sizes with estimates (:func:`memprof.aggregation.fit.search_batch_size`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..aggregation.fit import fitted_figure, search_batch_size
from ..aggregation.step import build_profile
from ..recording.runner import StepSpec, record_step
from ..recording.user_step import InputSpec, StepRecipe, input_tensors
from ..rendering.fit import BatchFit
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
from ..vocabulary import Mode, dtype_name

__all__ = ["StepArgs", "check_inputs", "check_step_args", "fit_batch", "optimizer_label", "fit_batch_size", "profile_step", "run_profile_step"]


@dataclass(frozen=True)
class StepArgs:
    """Checked arguments of :func:`profile_step`."""

    batch_size: int
    input_shape: tuple[int, ...]
    optimizer: Any
    dtype: torch.dtype
    device: torch.device
    estimate: bool
    inputs: Any = None
    optimizer_settings: tuple[tuple[str, Any], ...] = ()
    recipe: StepRecipe = StepRecipe()
    expandable_segments: bool = False

    def spec(self, batch_size: int | None = None) -> StepSpec:
        """The runner's :class:`~memprof.recording.runner.StepSpec` (at another batch size if given)."""
        return StepSpec(batch_size or self.batch_size, self.input_shape, self.inputs, self.optimizer,
                        self.optimizer_settings, self.recipe)


def check_inputs(inputs: Any) -> None:
    """Inputs are a tensor, a tuple or dict of tensors with a batch dimension, or InputSpecs.

    Raises:
        UsageError: naming what was given.
    """
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, InputSpec) for i in inputs):
        return
    if not isinstance(inputs, (torch.Tensor, dict, tuple, list)):
        raise UsageError(f"inputs must be a tensor, a tuple or dict of tensors, or InputSpecs; got {type(inputs).__name__}")
    tensors = input_tensors(inputs)
    if not any(t.dim() > 0 for t in tensors):
        raise UsageError("inputs need at least one tensor with a batch dimension")


def check_step_args(
    batch_size: Any, input_shape: Any, optimizer: Any = "sgd", dtype: Any = "float32", device: Any = "cpu",
    estimate: bool = False, *, inputs: Any = None, loss_fn: Any = None, optimizer_settings: Any = None,
    autocast: Any = None, accumulation_steps: Any = 1,
) -> StepArgs:
    """All argument checks of :func:`profile_step` in one place, before any work.

    Raises:
        UsageError: naming the bad value and the allowed ones.
    """
    batch_size = check_positive_int("batch size", batch_size)
    shape: tuple[int, ...] = ()
    if inputs is None:
        if input_shape is None or len(input_shape) == 0:
            raise UsageError("input shape is required for a model that is not registered, e.g. --input-shape 3,32,32 "
                             "(or inputs / --input NAME:DTYPE:SHAPE)")
        shape = tuple(check_positive_int("input shape dimension", d) for d in input_shape)
    else:
        check_inputs(inputs)
    if isinstance(optimizer, str) or not callable(optimizer):
        check_optimizer(optimizer)
    elif optimizer_settings:
        raise UsageError("optimizer settings are for a named optimizer; a callable takes its own")
    if loss_fn is not None and not callable(loss_fn):
        raise UsageError(f"loss_fn must be callable as loss_fn(output, inputs), got {type(loss_fn).__name__}")
    recipe = StepRecipe(loss_fn, parse_dtype(autocast) if autocast is not None else None,
                        check_positive_int("accumulation steps", accumulation_steps))
    return StepArgs(batch_size, shape, optimizer, parse_dtype(dtype), check_device(device, needs_cuda_here=not estimate),
                    bool(estimate), inputs, tuple(sorted(dict(optimizer_settings or {}).items())), recipe)


def optimizer_label(optimizer: Any) -> str:
    """An optimizer's name, or the callable's."""
    return optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", type(optimizer).__name__)


def run_profile_step(model: nn.Module, args: StepArgs, *, name: str | None = None, seed: int = 0) -> StepProfile:
    """The profile for checked arguments (:func:`check_step_args`); nothing is checked again.

    Raises:
        UsageError: if ``model`` is not an ``nn.Module``, or rejects the inputs.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"expected an nn.Module, got {type(model).__name__}")
    record = record_step(model, args.spec(), dtype=args.dtype, device=args.device, estimate=args.estimate, seed=seed,
                         expandable_segments=args.expandable_segments)
    profile = StepProfile.from_data(build_profile(
        record, name=name or type(model).__name__, batch_size=args.batch_size,
        input_shape=args.input_shape or record.input_shape, device=args.device, dtype=args.dtype,
        optimizer=optimizer_label(args.optimizer), mode=Mode.ESTIMATED if args.estimate else Mode.MEASURED,
    ))
    if record.traced_on is not None and record.traced_on != args.device and args.device.type == "cuda":
        profile.notes.append("no GPU here: the step was traced with CPU kernels (NOTE [ CUDA estimates without a GPU ])")
    return profile


def profile_step(
    model: nn.Module,
    batch_size: int = 32,
    input_shape: Sequence[int] | None = None,
    *,
    inputs: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    optimizer: str | Callable[[Any], torch.optim.Optimizer] = "sgd",
    optimizer_settings: dict[str, Any] | None = None,
    dtype: str | torch.dtype = "float32",
    autocast: str | torch.dtype | None = None,
    accumulation_steps: int = 1,
    device: str | torch.device = "cpu",
    estimate: bool = False,
    name: str | None = None,
    seed: int = 0,
    expandable_segments: bool = False,
) -> StepProfile:
    """Measure (or estimate) the memory of one steady-state training step.

    The model is not modified: the step runs on a copy (a fake copy when estimating).

    Args:
        model: any ``nn.Module``.
        batch_size: samples per step.
        input_shape: one float sample's shape (e.g. ``(3, 32, 32)``) when ``inputs`` is not given.
        inputs: example inputs: a tensor, a tuple of tensors (``model(*inputs)``) or a dict
            (``model(**inputs)``), of any dtype (token ids too), their batch dimension repeated
            or cut to ``batch_size``; or a list of :class:`~memprof.recording.user_step.InputSpec`.
            Floating-point inputs take ``dtype``; integer inputs keep theirs.
        loss_fn: ``loss_fn(output, inputs) -> loss``; default: the output's ``.loss`` attribute
            or key (Hugging Face models), else cross-entropy for 2-D logits against drawn
            targets, else the mean of the output.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"`` or ``params -> Optimizer``.
        optimizer_settings: keyword arguments over a named optimizer's defaults (``lr``, ...).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for parameters and float inputs.
        autocast: run forward and loss under ``torch.autocast`` with this dtype (None: off).
        accumulation_steps: forward and backward this many times per optimizer step.
        device: ``cpu`` or ``cuda`` (a CUDA estimate needs no GPU).
        estimate: run under FakeTensorMode instead of allocating.
        name: the model name shown (default: the class name).
        seed: seeds the input batch and targets.
        expandable_segments: a CUDA estimate models ``expandable_segments:True``.

    Returns:
        The :class:`~memprof.rendering.step.StepProfile`.

    Raises:
        UsageError: for a bad argument, or inputs the model rejects.
    """
    args = check_step_args(batch_size, input_shape, optimizer, dtype, device, estimate, inputs=inputs, loss_fn=loss_fn,
                           optimizer_settings=optimizer_settings, autocast=autocast,
                           accumulation_steps=accumulation_steps)
    if expandable_segments:
        args = replace(args, expandable_segments=True)
    return run_profile_step(model, args, name=name, seed=seed)


def fit_batch_size(
    model: nn.Module,
    memory: int,
    input_shape: Sequence[int] | None,
    *,
    optimizer: Any = "sgd",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    name: str | None = None,
    max_batch_size: int = BATCH_SIZE_LIMIT,
    expandable_segments: bool = False,
    **step: Any,
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
        input_shape: shape of one float sample (None when ``inputs`` is given).
        optimizer: as for :func:`profile_step`.
        dtype: as for :func:`profile_step`.
        device: ``"cuda"`` applies the caching allocator model.
        name: the model name shown.
        max_batch_size: never probe above this.
        expandable_segments: on CUDA, model ``expandable_segments:True``.
        step: further arguments of :func:`profile_step` (``inputs``, ``loss_fn``,
            ``optimizer_settings``, ``autocast``, ``accumulation_steps``).

    Returns:
        ``(batch_size, profile at that size)``.

    Raises:
        UsageError: for a bad argument, a model that rejects every batch size tried, or a budget
            below what the smallest batch needs ("even batch 1 needs ...").
    """
    found = fit_batch(model, memory, input_shape, optimizer=optimizer, dtype=dtype, device=device, name=name,
                      max_batch_size=max_batch_size, expandable_segments=expandable_segments, **step)
    return found.batch_size, found.profile


#: Batch sizes tried, in order, for the smallest one a model accepts (BatchNorm rejects 1).
_FIRST_BATCHES = (1, 2, 3, 4, 8, 16, 32, 64)


def fit_batch(
    model: nn.Module,
    memory: int,
    input_shape: Sequence[int] | None,
    *,
    optimizer: Any = "sgd",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    name: str | None = None,
    max_batch_size: int = BATCH_SIZE_LIMIT,
    expandable_segments: bool = False,
    **step: Any,
) -> BatchFit:
    """:func:`fit_batch_size`, returning the :class:`~memprof.rendering.fit.BatchFit` with what the search saw.

    The search starts at the smallest batch size the model accepts (a model with BatchNorm
    rejects batch 1 in training mode), says so, and says when it stopped at ``max_batch_size``.

    Raises:
        UsageError: for a bad argument, a model that rejects every batch size of ``_FIRST_BATCHES``,
            or a budget below what the smallest accepted batch needs.
    """
    memory = check_positive_int("memory budget (bytes)", memory)
    base = check_step_args(1, input_shape, optimizer, dtype, device, True, **step)
    if expandable_segments:
        base = replace(base, expandable_segments=True)
    max_batch_size = check_positive_int("max batch size", max_batch_size)
    probes: dict[int, StepProfile] = {}
    label = name or type(model).__name__

    def peak(b: int) -> int:
        if b not in probes:
            probes[b] = run_profile_step(model, replace(base, batch_size=b), name=label)
        return fitted_figure(probes[b])[1]

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
    if batch == 0:
        what, need = fitted_figure(probes[start])
        why = f" (the model rejects smaller ones: {rejected})" if start > 1 else ""
        raise UsageError(f"even batch {start} needs {format_bytes(need)} ({what}), more than the budget "
                         f"{format_bytes(memory)} ({memory} bytes){why}")
    return BatchFit(label, memory, str(base.device), dtype_name(base.dtype), optimizer_label(base.optimizer), batch,
                    probes[batch], smallest_batch_size=start,
                    smallest_peak_bytes=probes[start].peak_bytes, rejected=rejected if start > 1 else "",
                    max_batch_size=max_batch_size, capped=batch == max_batch_size)
