"""Running training steps: one step, one step under the trackers, and steps timed side by side.

The step is the one a training loop repeats: ``zero_grad(set_to_none=True)``, forward, loss,
backward, ``optimizer.step()``. :func:`record_step` profiles it in steady state: one warm-up
step first creates the optimizer state (SGD momentum, Adam moments), then the gradients are set
to None and the recorded step runs. Resident before it: parameters and buffers, optimizer state,
the batch. A measurement runs on a real copy of the model under the allocator tracker and the
storage tracker; an estimate runs the same step on a fake copy (FakeTensorMode: no memory, the
same storages). :func:`time_steps` is the one timing loop: steps of several setups interleaved
round by round (NOTE [ Step times side by side ]).

Aggregation reads the :class:`StepRecord` this module returns; it never runs a step itself.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import is_out_of_memory, out_of_memory
from ..validation import UsageError
from ..vocabulary import Phase, dtype_name
from .allocations import (
    AllocatorResult,
    CpuAllocatorTracker,
    CudaAllocatorTracker,
    make_allocator_tracker,
)
from .attribution import StorageTracker
from .user_step import (
    InputSpec,
    Inputs,
    StepRecipe,
    call_model,
    default_loss,
    input_tensors,
    make_inputs,
    select_output,
    resize_batch,
    to_device,
)
from .user_step import make_optimizer as _make_optimizer

__all__ = [
    "StepRecord",
    "StepSpec",
    "make_batch",
    "StepSetup",
    "compute_loss",
    "make_optimizer",
    "measure_step",
    "record_step",
    "run_step",
    "targets_for",
    "time_steps",
    "warm_up",
]


def make_optimizer(name: Any, params: Any, **settings: Any) -> torch.optim.Optimizer:
    """``sgd`` (lr 0.1, momentum 0.9: the deck's recipe), ``adam`` or ``adamw`` (lr 1e-3), with
    ``settings`` over those defaults, or any ``params -> Optimizer`` callable.

    Raises:
        UsageError: for another name, listing the allowed ones.
    """
    return _make_optimizer(name, params, **settings)


def compute_loss(output: Any, targets: torch.Tensor | None) -> torch.Tensor:
    """The loss NOTE [ Which output the loss is taken of ] (in :mod:`.user_step`) chooses."""
    return default_loss(output, targets)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _NoPhases:
    """Stands in for an allocator tracker when nobody marks phases."""

    def phase(self, name: str) -> Any:
        return contextlib.nullcontext()


def run_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Inputs,
    targets: torch.Tensor | None,
    tracker: StorageTracker | None = None,
    allocator: Any = None,
    phase_times: dict[str, float] | None = None,
    recipe: StepRecipe | None = None,
) -> torch.Tensor:
    """Forward, loss, backward (``accumulation_steps`` times) and optimizer step (gradients must
    have been set to None before).

    Args:
        model, optimizer, targets: the step.
        inputs: a tensor, a tuple (``model(*inputs)``) or a dict (``model(**inputs)``).
        tracker: told where each phase starts (:meth:`StorageTracker.set_phase`).
        allocator: an allocator tracker whose ``phase(name)`` context brackets each phase.
        phase_times: if given, filled with the time of each phase in seconds: CPU time of the
            process on the CPU (robust to other processes' load), wall time on CUDA (synchronised);
            a phase repeated by accumulation adds up.
        recipe: loss, autocast and accumulation (default: :class:`StepRecipe`).

    Returns:
        The loss of the last micro-step (detached).
    """
    recipe = recipe or StepRecipe()
    marks = allocator if allocator is not None else _NoPhases()
    device = input_tensors(inputs)[0].device
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    last = [clock(), ""]

    def set_phase(name: str) -> None:
        if phase_times is not None:
            _sync(device)
            now = clock()
            if last[1]:
                phase_times[last[1]] = phase_times.get(last[1], 0.0) + now - last[0]
            last[:] = [now, name]
        if tracker is not None:
            tracker.set_phase(name)

    for _ in range(recipe.accumulation_steps):
        set_phase(Phase.FORWARD.value)
        with marks.phase(Phase.FORWARD.value):
            with recipe.autocast_context(device):
                output = call_model(model, inputs)
                loss = recipe.loss(output, inputs, targets)
            if recipe.accumulation_steps > 1:
                loss = loss / recipe.accumulation_steps
        # the output stays referenced through backward (and the next micro-step's forward), as
        # ``out = model(x)`` in a training loop does: the reports' figures assume it
        set_phase(Phase.BACKWARD.value)
        with marks.phase(Phase.BACKWARD.value):
            loss.backward()
    set_phase(Phase.OPTIMIZER.value)
    with marks.phase(Phase.OPTIMIZER.value):
        optimizer.step()
    if phase_times is not None:
        _sync(device)
        phase_times[last[1]] = phase_times.get(last[1], 0.0) + clock() - last[0]
    return loss.detach()


@dataclass
class StepRecord:
    """What one recorded step left behind: the trackers after the step.

    Attributes:
        loss: the step's loss (detached).
        tracker: the storage tracker (timeline, module intervals, holders).
        allocator: the allocator tracker's result (None in an estimate).
        step_time_s: wall time of the step under the trackers (None in an estimate).
        step_cpu_time_s: CPU time of this process during the step (all threads).
        traced_on: the device the step really ran on (an estimate for CUDA without a GPU is
            traced on the CPU: NOTE [ CUDA estimates without a GPU ]).
        cuda_model: for a CUDA estimate, ``(allocated, reserved)`` bytes after every event of the
            storage stream replayed through the caching-allocator model.
        cuda_not_modelled: what that model leaves out (said with every CUDA estimate).
        kernels: in an estimate, what the target device's kernels add
            (:class:`~memprof.recording.estimate.DeviceKernels`: workspaces, scratch, what is
            not modelled).
        expandable_segments: the CUDA model ran with ``expandable_segments:True``.
    """

    loss: torch.Tensor
    tracker: StorageTracker
    allocator: AllocatorResult | None
    step_time_s: float | None
    step_cpu_time_s: float | None = None
    traced_on: torch.device | None = None
    cuda_model: tuple[np.ndarray, np.ndarray] | None = None
    cuda_not_modelled: tuple[str, ...] = ()
    #: one sample's shape of the first input (for reports)
    input_shape: tuple[int, ...] = ()
    #: what the loss was taken of: ``{"output": ..., "function": ...}`` (NOTE [ Which output the loss is taken of ])
    loss_choice: dict[str, str] = field(default_factory=dict)
    kernels: Any = None
    expandable_segments: bool = False
    #: what the estimate changed to follow the real run, said in the profile's notes
    notes: list[str] = field(default_factory=list)


def measure_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Inputs,
    targets: torch.Tensor | None,
    allocator: CpuAllocatorTracker | CudaAllocatorTracker | None = None,
    recipe: StepRecipe | None = None,
    kernels: Any = None,
    collect: bool = True,
) -> StepRecord:
    """Run one step under the storage tracker (and the allocator tracker, if given).

    ``kernels``: in an estimate, the :class:`~memprof.recording.estimate.DeviceKernels` mode
    already entered below the tracker; it is bound to the tracker's clock.
    ``collect``: collect garbage first, so that no earlier garbage is freed inside the recorded
    step (a full collection: about 0.2 s in a process with torch and its friends loaded); a
    caller that has just collected passes False.

    Every hook is removed on exit, also when the step raises. The loss, the gradients and the
    updated parameters are bit-identical to those of :func:`run_step` (tests check it).

    Returns:
        The :class:`StepRecord`.
    """
    tracker = StorageTracker(model, optimizer, [*input_tensors(inputs), *([targets] if targets is not None else [])])
    device = input_tensors(inputs)[0].device
    if collect:
        gc.collect()
    if kernels is not None:
        kernels.bind(tracker)
    if allocator is None:
        with tracker.track():
            loss = run_step(model, optimizer, inputs, targets, tracker, recipe=recipe)
        return StepRecord(loss, tracker, None, None, traced_on=device, kernels=kernels)
    if isinstance(allocator, CudaAllocatorTracker):
        tracker.listener = allocator
    with allocator.track():
        with tracker.track():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            loss = run_step(model, optimizer, inputs, targets, tracker, allocator, recipe=recipe)
            _sync(device)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return StepRecord(loss, tracker, allocator.result, elapsed, cpu, traced_on=device)


def _describe(inputs: Inputs) -> str:
    """Shapes and dtypes of the inputs, for an error message."""
    def one(t: torch.Tensor) -> str:
        return f"{tuple(t.shape)} {dtype_name(t.dtype)}"

    if isinstance(inputs, torch.Tensor):
        return one(inputs)
    if isinstance(inputs, Mapping):
        return ", ".join(f"{k}: {one(v)}" for k, v in inputs.items() if isinstance(v, torch.Tensor))
    return ", ".join(one(v) for v in inputs if isinstance(v, torch.Tensor))


def warm_up(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Inputs, make_targets: Callable[[Any], Any],
    recipe: StepRecipe | None = None,
) -> torch.Tensor | None:
    """One step that creates the optimizer state; returns the targets it drew.

    Raises:
        UsageError: when the model rejects the inputs, naming their shapes and the model's error,
            or when its output leaves the loss ambiguous.
        memprof.errors.OutOfMemory: when the forward runs out of memory (NOTE [ Out of memory is a result ]).
    """
    recipe = recipe or StepRecipe()
    device = input_tensors(x)[0].device
    try:
        with recipe.autocast_context(device):
            out = call_model(model, x)
    except (RuntimeError, ValueError, IndexError, TypeError, MemoryError) as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc, len(input_tensors(x)[0]), device) from None
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(x, torch.Tensor):
            raise UsageError(
                f"the model rejects an input of shape {tuple(x.shape[1:])} (batch {x.shape[0]}, "
                f"{dtype_name(x.dtype)}, {x.device.type}): {msg}"
            ) from None
        raise UsageError(f"the model rejects inputs {_describe(x)} ({device.type}): {msg}") from None
    with recipe.autocast_context(device):
        targets = make_targets(out) if recipe.loss_fn is None else None
        loss = recipe.loss(out, x, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    del out, loss
    return targets


def targets_for(batch_size: int, device: torch.device, seed: int) -> Callable[[Any], torch.Tensor | None]:
    """A function drawing class targets for a model's output (None unless it is (B, classes) logits)."""

    def make(out: Any) -> torch.Tensor | None:
        try:
            key, out = select_output(out)
        except UsageError:  # no output to draw targets for: the loss says why (or loss_fn needs none)
            return None
        if key == "loss":  # the model computed its own loss
            return None
        if out.dim() != 2:
            return None
        g = torch.Generator().manual_seed(seed + 1)
        t = torch.randint(out.shape[1], (batch_size,), generator=g)
        return t.to(device)

    return make


@contextlib.contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    """FakeTensorMode logs a traceback before re-raising a shape error; we report it in one line."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class StepSpec:
    """What a recorded step runs, beyond the model (arguments already checked).

    Attributes:
        batch_size: samples per step.
        input_shape: one float sample's shape, used when ``inputs`` is None.
        inputs: example inputs (tensor, tuple or dict; the batch dimension repeated or cut to
            ``batch_size``) or a list of :class:`~memprof.recording.user_step.InputSpec`.
        optimizer: a name (``sgd``, ``adam``, ``adamw``) or a ``params -> Optimizer`` callable.
        optimizer_settings: keyword arguments for a named optimizer.
        recipe: loss, autocast, accumulation.
    """

    batch_size: int
    input_shape: tuple[int, ...] = ()
    inputs: Any = None
    optimizer: Any = "sgd"
    optimizer_settings: tuple[tuple[str, Any], ...] = ()
    recipe: StepRecipe = StepRecipe()


def make_batch(spec: StepSpec, device: torch.device, dtype: torch.dtype, seed: int) -> Inputs:
    """The step's input batch on ``device``: from specs, example tensors, or the float input shape.

    Floating-point inputs take ``dtype``; integer inputs (token ids, masks) keep theirs.
    """
    inputs = spec.inputs
    if inputs is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((spec.batch_size, *spec.input_shape), generator=g).to(device=device, dtype=dtype)
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, InputSpec) for i in inputs):
        batch = make_inputs(list(inputs), spec.batch_size, torch.device("cpu"), seed)
    else:
        batch = resize_batch(inputs, spec.batch_size)
    return to_device(batch, device, dtype)


def sample_shape(inputs: Inputs) -> tuple[int, ...]:
    """One sample's shape of the first input with a batch dimension (for reports)."""
    return tuple(next(t for t in input_tensors(inputs) if t.dim() > 0).shape[1:])


def record_step(
    model: nn.Module,
    spec: StepSpec,
    *,
    dtype: torch.dtype,
    device: torch.device,
    estimate: bool,
    seed: int = 0,
    expandable_segments: bool = False,
) -> StepRecord:
    """Record one steady-state training step of a copy of ``model`` (arguments already checked).

    The model itself is not modified: the step runs on a deep copy, or on a fake copy when
    estimating (FakeTensorMode: nothing allocated, the same storages).

    Args:
        model: any ``nn.Module``.
        spec: the batch, optimizer, loss, precision and accumulation (:class:`StepSpec`).
        dtype, device: of parameters and floating-point inputs.
        estimate: run on a fake copy instead of allocating.
        seed: seeds the input batch and the targets.
        expandable_segments: a CUDA estimate models ``expandable_segments:True``.

    Returns:
        The :class:`StepRecord` (with the allocator's result when measured).

    Raises:
        UsageError: when the model rejects the inputs, or its output leaves the loss ambiguous.
        memprof.errors.OutOfMemory: when a measured step does not fit (NOTE [ Out of memory is a result ]).
    """
    if estimate:
        record = _record_fake_step(model, spec, dtype, device, seed, expandable_segments)
    else:
        try:
            work = copy.deepcopy(model).to(device=device, dtype=dtype)
            work.train()
            x = make_batch(spec, device, dtype, seed)
            opt = make_optimizer(spec.optimizer, work.parameters(), **dict(spec.optimizer_settings))
            targets = warm_up(work, opt, x, targets_for(spec.batch_size, device, seed), spec.recipe)
            record = measure_step(work, opt, x, targets, allocator=make_allocator_tracker(device), recipe=spec.recipe)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise out_of_memory(exc, spec.batch_size, device) from None
        record.input_shape = sample_shape(x)
    record.loss_choice = dict(spec.recipe.choice)
    return record


# NOTE [ CUDA estimates without a GPU ]
# Fake CUDA tensors can be created without a GPU, but the autograd engine needs a CUDA
# context to run their backward. Without a GPU the step is traced with fake CPU tensors
# (the same ops and storage sizes, except cuDNN-specific extras such as the batch-norm
# reserve space) and the caching-allocator model is applied to that trace.
def _record_fake_step(model: nn.Module, spec: StepSpec, dtype: torch.dtype, device: torch.device,
                      seed: int, expandable_segments: bool = False) -> StepRecord:
    """:func:`record_step` under FakeTensorMode (NOTE [ CUDA estimates without a GPU ]).

    The fake step runs under :class:`~memprof.recording.estimate.DeviceKernels`, which gives
    fake kernels the outputs and scratch of the target device's (NOTE [ What an estimate adds
    to the fake step ]).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .estimate import NOT_MODELLED_CUDA, DeviceKernels, make_fake_model, simulate_cuda_allocator

    trace_dev = device if device.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")
    mode = FakeTensorMode()
    work = make_fake_model(model, mode, trace_dev, dtype)
    work.train()
    # One sample of real values (an estimate allocates nothing of the batch's size: fit probes
    # batches of thousands), made fake and repeated to the batch size inside the fake mode.
    real = make_batch(replace(spec, batch_size=1), torch.device("cpu"), dtype, seed)
    mask_note = _skip_all_ones_mask(work, spec)
    with mode, _quiet_fake_tensor_log():
        x = resize_batch(fake_inputs(real, mode, trace_dev), spec.batch_size)
        opt = make_optimizer(spec.optimizer, work.parameters(), **dict(spec.optimizer_settings))
        with DeviceKernels(device.type, trace_dev.type):  # the warm-up holds real-sized workspaces too
            targets = warm_up(work, opt, x, targets_for(spec.batch_size, trace_dev, seed), spec.recipe)
        with DeviceKernels(device.type, trace_dev.type) as kernels:
            record = measure_step(work, opt, x, targets, recipe=spec.recipe, kernels=kernels)
    record.traced_on = trace_dev
    record.input_shape = sample_shape(real)
    record.notes += [mask_note] if mask_note else []
    if device.type == "cuda":
        tracker = record.tracker
        lives = [(life.start, life.end, life.nbytes) for lives in tracker.lives.values() for life in lives]
        lives += kernels.persistent_lives()
        record.cuda_model = simulate_cuda_allocator(lives, tracker.clock + 1, transient=kernels.transient_allocations(),
                                                    expandable_segments=expandable_segments)
        record.cuda_not_modelled = tuple(NOT_MODELLED_CUDA)
        record.expandable_segments = expandable_segments
    return record


# NOTE [ An all-ones attention mask in an estimate ]
# A Hugging Face model reads its attention_mask before attention: when every entry is 1 (no
# padding) it drops the mask and calls scaled_dot_product_attention without one (is_causal for a
# decoder), which spares the expanded (B, 1, T, T) mask. It cannot read a FakeTensor's values, so
# in an estimate it keeps the mask (transformers' is_tracing() is true for fake tensors), and the
# estimate would count that mask and its temporaries, which the real run never allocates: BERT
# at T=48, batch 8: 18 KiB more at the activation peak. The batch is built from real values, so
# the estimate knows the mask is all ones: it takes the real run's branch by passing
# attention_mask=None to the model (a forward pre-hook on the fake copy; the mask stays a held
# input, and a loss_fn still receives it), and says so in the profile's notes. What may still
# differ is the mask's own (B, T) check in the real run (one bool copy and a scalar, inside the
# forward): at most B x T bytes and a few small scalars.
def _mask_is_all_ones(spec: StepSpec) -> tuple[bool, int]:
    """(whether the step's whole ``attention_mask`` is all ones, its sequence length).

    The estimate's batch repeats one sample; the real batch's rows are what the model checks.
    """
    inputs = spec.inputs
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, InputSpec) for i in inputs):
        mask_spec = next((i for i in inputs if i.name == "attention_mask"), None)
        if mask_spec is None or not mask_spec.shape:
            return False, 0
        ones = mask_spec.dtype == torch.bool or (mask_spec.low == 1 and mask_spec.high == 2)
        return ones, mask_spec.shape[-1]
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() < 2:
        return False, 0
    rows = mask[: min(spec.batch_size, mask.shape[0])]  # resize_batch repeats these rows
    return bool((rows == 1).all()), int(mask.shape[-1])


def _skip_all_ones_mask(work: nn.Module, spec: StepSpec) -> str:
    """For a Hugging Face model given an all-ones ``attention_mask``: the real run's branch (NOTE above)."""
    if not type(work).__module__.startswith("transformers."):
        return ""
    ones, seq = _mask_is_all_ones(spec)
    if not ones:
        return ""
    batch_size = spec.batch_size

    def drop(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, {**kwargs, "attention_mask": None}

    work.register_forward_pre_hook(drop, with_kwargs=True)  # the fake copy only: the user's model is untouched
    return (f"attention_mask is all ones: a real run of this Hugging Face model drops it (no padding), so the "
            f"estimate called the model with attention_mask=None (the mask is still held as an input); up to "
            f"{batch_size * seq} bytes (the real run's bool copy of the mask while it checks it) may differ "
            f"(NOTE [ An all-ones attention mask in an estimate ])")


def fake_inputs(real: Inputs, mode: Any, device: torch.device) -> Inputs:
    """Fake copies of real inputs (same shapes and dtypes, no memory), on ``device``."""
    def fake(t: torch.Tensor) -> torch.Tensor:
        return mode.from_tensor(t).to(device)

    if isinstance(real, torch.Tensor):
        return fake(real)
    if isinstance(real, Mapping):
        return {k: fake(v) if isinstance(v, torch.Tensor) else v for k, v in real.items()}
    return tuple(fake(v) if isinstance(v, torch.Tensor) else v for v in real)


@dataclass
class StepSetup:
    """One model ready to be timed: warmed up, its optimizer state created, its batch on device."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    targets: torch.Tensor | None


@dataclass
class StepTimes:
    """Step times of one setup, one per round (seconds), and each phase's fastest time."""

    rounds: list[float]
    phases: dict[str, float]


# NOTE [ Step times side by side ]
# Step times on a shared machine drift with its load. Every setup is therefore prepared first
# (model, optimizer with its state, one warm-up step), then timed in rounds: each round runs
# one step of every setup in turn, so that a change of load hits all of them alike. Other work
# on the machine can only add time to a step, never remove it, so a setup's undisturbed time is
# best estimated by its fastest round (as timeit advises); ratios of fastest rounds are the
# headline, and the range of the ratios taken within each round shows how noisy the run was.
def time_steps(
    setups: Mapping[str, StepSetup],
    repeats: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
    phases: bool = False,
    on_round: Callable[[], Any] | None = None,
) -> dict[str, StepTimes]:
    """Time ``repeats`` rounds of one step per setup, interleaved (NOTE [ Step times side by side ]).

    Args:
        setups: name -> a warmed-up :class:`StepSetup`.
        repeats: rounds.
        clock: ``time.perf_counter`` (wall time) or ``time.process_time`` (CPU time of the process).
        phases: also time each phase (see :func:`run_step`'s ``phase_times``).
        on_round: called after each round (a progress bar's update).

    Returns:
        Name -> :class:`StepTimes`. Gradients are set to None afterwards.
    """
    times = {name: StepTimes([], {}) for name in setups}
    for _ in range(repeats):
        for name, s in setups.items():
            split: dict[str, float] | None = {} if phases else None
            s.optimizer.zero_grad(set_to_none=True)
            _sync(s.inputs.device)
            t0 = clock()
            run_step(s.model, s.optimizer, s.inputs, s.targets, phase_times=split)
            _sync(s.inputs.device)
            times[name].rounds.append(clock() - t0)
            for ph, t in (split or {}).items():
                times[name].phases[ph] = min(times[name].phases.get(ph, t), t)
        if on_round is not None:
            on_round()
    for s in setups.values():
        s.optimizer.zero_grad(set_to_none=True)
    return times
