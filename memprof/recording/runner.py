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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import is_out_of_memory, out_of_memory
from ..validation import UsageError, check_optimizer
from ..vocabulary import Optimizer, Phase, dtype_name
from .allocations import (
    AllocatorResult,
    CpuAllocatorTracker,
    CudaAllocatorTracker,
    make_allocator_tracker,
)
from .attribution import StorageTracker

__all__ = [
    "StepRecord",
    "StepSetup",
    "HOW_TO_CHOOSE",
    "StepLoss",
    "compute_loss",
    "select_output",
    "make_optimizer",
    "measure_step",
    "record_step",
    "run_step",
    "targets_for",
    "time_steps",
    "warm_up",
]


def make_optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    """``sgd`` (lr 0.1, momentum 0.9: the deck's recipe) or ``adam`` (lr 1e-3).

    Raises:
        UsageError: for another name, listing the allowed ones.
    """
    check_optimizer(name)
    if name == Optimizer.SGD:
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.Adam(params, lr=1e-3)


# NOTE [ Which output the loss is taken of ]
# A profile runs a training step, so it needs a loss, and a wrong guess changes what is
# measured (a loss over a (B, 8192) feature map leaves the classifier head without gradients).
# The output the loss is taken of is chosen by name, never by position, and always reported:
# a tensor is itself; a mapping (a dict, a Hugging Face ModelOutput) gives its ``loss`` (used as
# is) or else its ``logits`` or else its only tensor; a tuple or list gives its only tensor.
# Several tensors and no such name is an error that says how to choose: ``loss_fn`` (a function
# of the output returning the loss) or the general step profiler, ``memprof.track()``.
# Cross-entropy with random class targets is taken of (B, classes) scores, the mean otherwise.
HOW_TO_CHOOSE = ("pass loss_fn= to memprof.profile_step (a function of the model's output returning the loss), "
                 "or profile your own training step with memprof.track()")


def select_output(output: Any) -> tuple[str, torch.Tensor]:
    """``(name, tensor)`` of the output a loss is taken of (NOTE [ Which output the loss is taken of ]).

    Raises:
        UsageError: when the output holds several tensors and none is named ``loss`` or ``logits``.
    """
    if isinstance(output, torch.Tensor):
        return "output", output
    if isinstance(output, Mapping):
        tensors = {str(k): v for k, v in output.items() if isinstance(v, torch.Tensor)}
        for key in ("loss", "logits"):
            if key in tensors:
                return key, tensors[key]
        if len(tensors) == 1:
            return next(iter(tensors.items()))
        raise UsageError(f"the model returns {len(tensors)} tensors ({', '.join(tensors) or 'none'}) and none is "
                         f"named loss or logits, so the loss cannot be chosen: {HOW_TO_CHOOSE}")
    if isinstance(output, (tuple, list)):
        idx = [i for i, v in enumerate(output) if isinstance(v, torch.Tensor)]
        if len(idx) == 1:
            return f"output[{idx[0]}]", output[idx[0]]
        raise UsageError(f"the model returns a {type(output).__name__} of {len(idx)} tensors, so the loss cannot "
                         f"be chosen: {HOW_TO_CHOOSE}")
    raise UsageError(f"the model returns a {type(output).__name__}, not a tensor: {HOW_TO_CHOOSE}")


class StepLoss:
    """The loss of a profiled step, and what it was taken of (NOTE [ Which output the loss is taken of ]).

    Call it as ``loss(output, targets)``; afterwards :attr:`choice` says ``{"output": name,
    "function": "cross_entropy" | "mean" | "as returned" | "loss_fn"}``.

    Args:
        loss_fn: the user's ``loss_fn(output) -> scalar tensor``; None chooses by the rules.
    """

    def __init__(self, loss_fn: Callable[[Any], torch.Tensor] | None = None) -> None:
        self.loss_fn = loss_fn
        self.choice: dict[str, str] = {}

    def __call__(self, output: Any, targets: torch.Tensor | None) -> torch.Tensor:
        if self.loss_fn is not None:
            self.choice = {"output": "the whole output", "function": "loss_fn"}
            return self.loss_fn(output)
        key, t = select_output(output)
        if key == "loss":
            self.choice = {"output": key, "function": "as returned"}
            return t if t.dim() == 0 else t.float().mean()
        if targets is not None and t.dim() == 2:
            self.choice = {"output": key, "function": "cross_entropy"}
            return nn.functional.cross_entropy(t, targets)
        self.choice = {"output": key, "function": "mean"}
        return t.float().mean()


def compute_loss(output: Any, targets: torch.Tensor | None) -> torch.Tensor:
    """The loss chosen by NOTE [ Which output the loss is taken of ] (a fresh :class:`StepLoss`)."""
    return StepLoss()(output, targets)


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
    inputs: torch.Tensor,
    targets: torch.Tensor | None,
    tracker: StorageTracker | None = None,
    allocator: Any = None,
    phase_times: dict[str, float] | None = None,
    loss_fn: Callable[[Any, torch.Tensor | None], torch.Tensor] = compute_loss,
) -> torch.Tensor:
    """Forward, loss, backward and optimizer step (gradients must have been set to None before).

    Args:
        model, optimizer, inputs, targets: the step.
        tracker: told where each phase starts (:meth:`StorageTracker.set_phase`).
        allocator: an allocator tracker whose ``phase(name)`` context brackets each phase.
        phase_times: if given, filled with the time of each phase in seconds: CPU time of the
            process on the CPU (robust to other processes' load), wall time on CUDA (synchronised).
        loss_fn: ``loss_fn(output, targets)``, a :class:`StepLoss` (default: :func:`compute_loss`).

    Returns:
        The loss (detached).
    """
    marks = allocator if allocator is not None else _NoPhases()
    clock = time.process_time if inputs.device.type == "cpu" else time.perf_counter
    last = [clock(), ""]

    def set_phase(name: str) -> None:
        if phase_times is not None:
            _sync(inputs.device)
            now = clock()
            if last[1]:
                phase_times[last[1]] = now - last[0]
            last[:] = [now, name]
        if tracker is not None:
            tracker.set_phase(name)

    set_phase(Phase.FORWARD.value)
    with marks.phase(Phase.FORWARD.value):
        output = model(inputs)
        loss = loss_fn(output, targets)
    set_phase(Phase.BACKWARD.value)
    with marks.phase(Phase.BACKWARD.value):
        loss.backward()
    set_phase(Phase.OPTIMIZER.value)
    with marks.phase(Phase.OPTIMIZER.value):
        optimizer.step()
    if phase_times is not None:
        _sync(inputs.device)
        phase_times[last[1]] = clock() - last[0]
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
        loss_choice: the output the loss was taken of and the loss function
            (NOTE [ Which output the loss is taken of ]).
    """

    loss: torch.Tensor
    tracker: StorageTracker
    allocator: AllocatorResult | None
    step_time_s: float | None
    step_cpu_time_s: float | None = None
    traced_on: torch.device | None = None
    cuda_model: tuple[np.ndarray, np.ndarray] | None = None
    cuda_not_modelled: tuple[str, ...] = ()
    loss_choice: dict[str, str] = field(default_factory=dict)


def measure_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor | None,
    allocator: CpuAllocatorTracker | CudaAllocatorTracker | None = None,
    loss_fn: Callable[[Any, torch.Tensor | None], torch.Tensor] = compute_loss,
) -> StepRecord:
    """Run one step under the storage tracker (and the allocator tracker, if given).

    Every hook is removed on exit, also when the step raises. The loss, the gradients and the
    updated parameters are bit-identical to those of :func:`run_step` (tests check it).

    Returns:
        The :class:`StepRecord`.
    """
    tracker = StorageTracker(model, optimizer, [t for t in (inputs, targets) if t is not None])
    device = inputs.device
    gc.collect()
    if allocator is None:
        with tracker.track():
            loss = run_step(model, optimizer, inputs, targets, tracker, loss_fn=loss_fn)
        return StepRecord(loss, tracker, None, None, traced_on=device)
    if isinstance(allocator, CudaAllocatorTracker):
        tracker.listener = allocator
    with allocator.track():
        with tracker.track():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            loss = run_step(model, optimizer, inputs, targets, tracker, allocator, loss_fn=loss_fn)
            _sync(device)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return StepRecord(loss, tracker, allocator.result, elapsed, cpu, traced_on=device)


def warm_up(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, make_targets: Callable[[Any], Any],
    loss_fn: Callable[[Any, torch.Tensor | None], torch.Tensor] = compute_loss,
) -> torch.Tensor | None:
    """One step that creates the optimizer state; returns the targets it drew.

    Raises:
        UsageError: when the model rejects the input, naming its shape and the model's error.
        memprof.errors.OutOfMemory: when the forward runs out of memory (NOTE [ Out of memory is a result ]).
    """
    try:
        out = model(x)
    except (RuntimeError, ValueError, IndexError, MemoryError) as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc, x.shape[0], x.device) from None
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"the model rejects an input of shape {tuple(x.shape[1:])} (batch {x.shape[0]}, "
            f"{dtype_name(x.dtype)}, {x.device.type}): {msg}"
        ) from None
    targets = make_targets(out)
    loss = loss_fn(out, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    del out, loss
    return targets


def targets_for(batch_size: int, device: torch.device, seed: int) -> Callable[[Any], torch.Tensor | None]:
    """A function drawing class targets for a model's output (None unless it is (B, classes) logits)."""

    def make(out: Any) -> torch.Tensor | None:
        try:
            _, out = select_output(out)
        except UsageError:  # no output to draw targets for: the loss says why (or loss_fn needs none)
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


def record_step(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, ...],
    *,
    optimizer: str,
    dtype: torch.dtype,
    device: torch.device,
    estimate: bool,
    seed: int = 0,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
) -> StepRecord:
    """Record one steady-state training step of a copy of ``model`` (arguments already checked).

    The model itself is not modified: the step runs on a deep copy, or on a fake copy when
    estimating (FakeTensorMode: nothing allocated, the same storages).

    Args:
        model: any ``nn.Module`` taking one tensor of shape ``(batch_size, *input_shape)``.
        batch_size, input_shape: the batch.
        optimizer: ``sgd`` or ``adam``.
        dtype, device: of parameters and inputs.
        estimate: run on a fake copy instead of allocating.
        seed: seeds the input batch and the targets.
        loss_fn: ``loss_fn(output) -> loss``; None chooses (NOTE [ Which output the loss is taken of ]).

    Returns:
        The :class:`StepRecord` (with the allocator's result when measured).

    Raises:
        UsageError: when the model rejects the input, or its output leaves the loss ambiguous.
        memprof.errors.OutOfMemory: when a measured step does not fit (NOTE [ Out of memory is a result ]).
    """
    step_loss = StepLoss(loss_fn)
    if estimate:
        record = _record_fake_step(model, batch_size, input_shape, optimizer, dtype, device, seed, step_loss)
        record.loss_choice = dict(step_loss.choice)
        return record
    try:
        work = copy.deepcopy(model).to(device=device, dtype=dtype)
        work.train()
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((batch_size, *input_shape), generator=g).to(device=device, dtype=dtype)
        opt = make_optimizer(optimizer, work.parameters())
        targets = warm_up(work, opt, x, targets_for(batch_size, device, seed), step_loss)
        record = measure_step(work, opt, x, targets, allocator=make_allocator_tracker(device), loss_fn=step_loss)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(exc, batch_size, device) from None
    record.loss_choice = dict(step_loss.choice)
    return record


# NOTE [ CUDA estimates without a GPU ]
# Fake CUDA tensors can be created without a GPU, but the autograd engine needs a CUDA
# context to run their backward. Without a GPU the step is traced with fake CPU tensors
# (the same ops and storage sizes, except cuDNN-specific extras such as the batch-norm
# reserve space) and the caching-allocator model is applied to that trace.
def _record_fake_step(
    model: nn.Module, batch_size: int, input_shape: tuple[int, ...], optimizer: str,
    dtype: torch.dtype, device: torch.device, seed: int, step_loss: StepLoss,
) -> StepRecord:
    """:func:`record_step` under FakeTensorMode (NOTE [ CUDA estimates without a GPU ])."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .estimate import NOT_MODELLED_CUDA, make_fake_model, simulate_cuda_allocator

    trace_dev = device if device.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")
    mode = FakeTensorMode()
    work = make_fake_model(model, mode, trace_dev, dtype)
    work.train()
    with mode, _quiet_fake_tensor_log():
        x = torch.empty((batch_size, *input_shape), dtype=dtype, device=trace_dev)
        opt = make_optimizer(optimizer, work.parameters())
        targets = warm_up(work, opt, x, targets_for(batch_size, trace_dev, seed), step_loss)
        record = measure_step(work, opt, x, targets, loss_fn=step_loss)
    record.traced_on = trace_dev
    if device.type == "cuda":
        tracker = record.tracker
        lives = [(life.start, life.end, life.nbytes) for lives in tracker.lives.values() for life in lives]
        record.cuda_model = simulate_cuda_allocator(lives, tracker.clock + 1)
        record.cuda_not_modelled = tuple(NOT_MODELLED_CUDA)
    return record


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
