"""One training step, measured or estimated: :func:`profile_step` and its :class:`StepProfile`.

The step is the one a training loop repeats: ``zero_grad(set_to_none=True)``, forward, loss,
backward, ``optimizer.step()``. It is profiled in steady state: one warm-up step first creates
the optimizer state (SGD momentum, Adam moments), then the gradients are set to None and the
measured step runs. Resident before it: parameters and buffers, optimizer state, the batch.

Measured mode runs the step on a copy of the model under the allocator tracker (the exact CPU
allocator replay, or the CUDA caching allocator's peaks) and the storage tracker (who owns
what). Estimated mode runs the same step on a fake copy: no memory, same storages.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsageError, check_choice, check_positive_int
from ..recording.allocations import AllocatorResult, CpuAllocatorTracker, CudaAllocatorTracker, make_allocator_tracker
from ..recording.attribution import (
    STATE_CATEGORIES,
    TRACKED_CATEGORIES,
    Category,
    StorageTracker,
    Timeline,
    activation_bytes,
)
from ..units import format_bytes, parse_dtype

__all__ = [
    "OPTIMIZERS",
    "StepProfile",
    "fit_batch_size",
    "fitted_figure",
    "make_optimizer",
    "measure_step",
    "profile_step",
    "run_step",
]

#: Optimizers a profile can use; the deck's recipe is SGD with momentum 0.9.
OPTIMIZERS = ("sgd", "adam")
MODES = ("measured", "estimated")
PHASES = ("forward", "backward", "optimizer")


def make_optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    """``sgd`` (lr 0.1, momentum 0.9: the deck's recipe) or ``adam`` (lr 1e-3).

    Raises:
        UsageError: for another name, listing the allowed ones.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.Adam(params, lr=1e-3)


def compute_loss(output: Any, targets: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy for (B, classes) logits with integer targets; the mean otherwise."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    elif isinstance(output, dict):
        output = next(iter(output.values()))
    if targets is not None and output.dim() == 2:
        return nn.functional.cross_entropy(output, targets)
    return output.float().mean()


class _NullPhase:
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
) -> torch.Tensor:
    """Forward, loss, backward and optimizer step (gradients must have been set to None before).

    Args:
        phase_times: if given, filled with the time of each phase in seconds: CPU time of the
            process on the CPU (robust to other processes' load), wall time on CUDA (synchronised).

    Returns:
        The loss (detached).
    """
    marks = allocator if allocator is not None else _NullPhase()
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

    set_phase("forward")
    with marks.phase("forward"):
        output = model(inputs)
        loss = compute_loss(output, targets)
    set_phase("backward")
    with marks.phase("backward"):
        loss.backward()
    set_phase("optimizer")
    with marks.phase("optimizer"):
        optimizer.step()
    if phase_times is not None:
        _sync(inputs.device)
        phase_times[last[1]] = clock() - last[0]
    return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepRecord:
    """Raw output of :func:`measure_step`: the trackers after the step."""

    loss: torch.Tensor
    tracker: StorageTracker
    allocator: AllocatorResult | None
    step_time_s: float | None
    #: CPU time of this process during the step (all threads): robust to other processes' load
    step_cpu_time_s: float | None = None
    #: in an estimate, what the target device's kernels add (recording.estimate.DeviceKernels)
    kernels: Any = None


def measure_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor | None,
    allocator: CpuAllocatorTracker | CudaAllocatorTracker | None = None,
    kernels: Any = None,
) -> StepRecord:
    """Run one step under the storage tracker (and the allocator tracker, if given).

    ``kernels``: in an estimate, the :class:`~memprof.recording.estimate.DeviceKernels` mode
    already entered below the tracker; it is bound to the tracker's clock.

    Every hook is removed on exit, also when the step raises. The loss, the gradients and the
    updated parameters are bit-identical to those of :func:`run_step` (tests check it).

    Returns:
        The :class:`StepRecord`.
    """
    tracker = StorageTracker(model, optimizer, [t for t in (inputs, targets) if t is not None])
    device = inputs.device
    gc.collect()
    if kernels is not None:
        kernels.bind(tracker)
    if allocator is None:
        with tracker.track():
            loss = run_step(model, optimizer, inputs, targets, tracker)
        return StepRecord(loss, tracker, None, None, kernels=kernels)
    if isinstance(allocator, CudaAllocatorTracker):
        tracker.listener = allocator
    with allocator.track():
        with tracker.track():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            loss = run_step(model, optimizer, inputs, targets, tracker, allocator)
            _sync(device)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return StepRecord(loss, tracker, allocator.result, elapsed, cpu)


# ---------------------------------------------------------------------------------------------
@dataclass
class StepProfile:
    """Memory of one training step: peaks, the breakdown at the peak, modules, a timeline.

    ``peak_bytes`` is allocator truth in measured mode (the c10 CPU allocator replay, or
    ``max_memory_allocated`` on CUDA) and the estimate in estimated mode. ``at_peak`` breaks it
    into categories that add up to it exactly; ``unattributed`` is what the allocator held and
    no tensor owned (kernel workspaces; on CUDA also the 512-byte rounding and unsplit blocks).
    ``activation_peak_bytes``: NOTE [ The activation peak, defined once ].
    """

    model: str
    batch_size: int
    device: str
    dtype: str
    optimizer: str
    mode: str
    peak_bytes: int
    attributed_peak_bytes: int
    activation_peak_bytes: int
    at_peak: dict[str, int]
    phases: dict[str, dict[str, int | None]]
    modules: list[dict[str, Any]]
    step_time_s: float | None = None
    reserved_peak_bytes: int | None = None
    input_shape: tuple[int, ...] = ()
    #: at the activation peak, the largest non-state holders: {category, module, bytes}
    activation_peak_holders: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timeline: Timeline | None = field(default=None, repr=False)
    allocator_timeline: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    # ---- renderings -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-able content (no timeline)."""
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "input_shape": list(self.input_shape),
            "device": self.device,
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "mode": self.mode,
            "peak_bytes": self.peak_bytes,
            "reserved_peak_bytes": self.reserved_peak_bytes,
            "attributed_peak_bytes": self.attributed_peak_bytes,
            "activation_peak_bytes": self.activation_peak_bytes,
            "at_peak": dict(self.at_peak),
            "phases": self.phases,
            "modules": self.modules,
            "activation_peak_holders": self.activation_peak_holders,
            "step_time_s": self.step_time_s,
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """JSON with the keys of :meth:`to_dict` (bytes as integers), ending with a newline."""
        from ..rendering.tables import render_json

        return render_json(self.to_dict())

    def to_dataframe(self) -> Any:
        """The module rows as a pandas DataFrame (bytes as integers)."""
        import pandas as pd

        return pd.DataFrame(self.modules)

    def to_csv(self) -> str:
        """The module rows as CSV."""
        from ..rendering.tables import render_csv

        return render_csv(self.to_dataframe())

    def _frames(self) -> tuple[Any, Any, Any]:
        import pandas as pd

        kind = "measured" if self.mode == "measured" else "estimated"
        summary = [
            ("model", self.model),
            ("batch size", str(self.batch_size)),
            ("device / dtype / optimizer", f"{self.device} / {self.dtype} / {self.optimizer}"),
            ("mode", self.mode),
            (f"peak ({kind})", format_bytes(self.peak_bytes, "MiB")),
        ]
        if self.reserved_peak_bytes is not None:
            summary.append((f"reserved peak ({kind})", format_bytes(self.reserved_peak_bytes, "MiB")))
        summary += [
            ("attributed peak (tensor-owned)", format_bytes(self.attributed_peak_bytes, "MiB")),
            ("activation peak", format_bytes(self.activation_peak_bytes, "MiB")),
        ]
        for ph, row in self.phases.items():
            summary.append((f"{ph} peak", _fmt(row["peak_bytes"])))
        if self.step_time_s is not None:
            summary.append(("step time", f"{self.step_time_s:.3f} s"))
        total = max(self.peak_bytes, 1)
        breakdown = [(k, v, 100 * v / total) for k, v in self.at_peak.items()]
        breakdown.append(("total", sum(self.at_peak.values()), 100 * sum(self.at_peak.values()) / total))
        return (
            pd.DataFrame(summary, columns=["figure", "value"]),
            pd.DataFrame(breakdown, columns=["category", "bytes", "share"]),
            self.to_dataframe(),
        )

    def _render(self, fmt: str, max_modules: int | None) -> str:
        from ..rendering.tables import render_sections, render_table

        summary, breakdown, modules = self._frames()
        if max_modules is not None:
            modules = modules.head(max_modules)
        cols = ["name", "type", "calls", "forward_peak_bytes", "forward_increase_bytes",
                "backward_peak_bytes", "backward_increase_bytes"]
        cols += [c for c in modules.columns if c.endswith("allocated_peak_bytes")]
        modules = modules[cols].copy()
        modules["name"] = modules["name"].replace("", "(model)")
        byte_fmt = {c: _fmt_any for c in cols if c.endswith("_bytes")}
        return render_sections([
            render_table(summary, fmt, title=f"Training step: {self.model}"),
            render_table(
                breakdown, fmt, title="At the peak",
                formatters={"bytes": _fmt_any, "share": lambda v: f"{v:.1f}%"},
                notes=["unattributed: allocator bytes no tensor owns (kernel workspaces, rounding)"],
            ),
            render_table(
                modules, fmt, title="Per module",
                headers={"forward_peak_bytes": "fwd peak", "forward_increase_bytes": "fwd +",
                         "backward_peak_bytes": "bwd peak", "backward_increase_bytes": "bwd +",
                         "forward_allocated_peak_bytes": "fwd peak (allocator)",
                         "backward_allocated_peak_bytes": "bwd peak (allocator)"},
                formatters=byte_fmt,
                notes=["peak: live bytes of the whole step while the module runs; +: above the bytes "
                       "live when it started; backward includes recomputation in reversible blocks",
                       *self.notes],
            ),
        ])

    def to_text(self, max_modules: int | None = None) -> str:
        """Plain-text report: headline figures, breakdown at the peak, module peaks."""
        return self._render("text", max_modules)

    def to_markdown(self, max_modules: int | None = None) -> str:
        """Markdown report with the same content as :meth:`to_text`."""
        return self._render("markdown", max_modules)

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, path: str | Path | None = None) -> Any:
        """The timeline of live bytes by category with the phases marked (see rendering.plots).

        Args:
            path: write a PNG there if given.

        Returns:
            The matplotlib Figure.
        """
        from ..rendering.plots import plot_step_timeline

        return plot_step_timeline(self, path)


def _fmt(v: int | None) -> str:
    return "" if v is None else format_bytes(v, "MiB")


def _fmt_any(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return format_bytes(int(v), "MiB")


# ---------------------------------------------------------------------------------------------
def _module_rows(tracker: StorageTracker, total: np.ndarray, cuda_peaks: dict[tuple[str, str], int], baseline: int) -> list[dict[str, Any]]:
    acc: dict[str, dict[str, Any]] = {}
    for name, typ in tracker.module_names.items():
        acc[name] = {"name": name, "type": typ, "calls": 0}
        for ph in ("forward", "backward"):
            acc[name][f"{ph}_peak_bytes"] = None
            acc[name][f"{ph}_increase_bytes"] = None
    for iv in tracker.intervals:
        row = acc.get(iv.name)
        if row is None:
            continue
        if iv.phase == "forward":
            row["calls"] += 1
        seg = total[iv.start : iv.end + 1]
        if len(seg) == 0:
            continue
        peak = int(seg.max())
        inc = peak - int(total[max(iv.start - 1, 0)])
        key_p, key_i = f"{iv.phase}_peak_bytes", f"{iv.phase}_increase_bytes"
        row[key_p] = peak if row[key_p] is None else max(row[key_p], peak)
        row[key_i] = inc if row[key_i] is None else max(row[key_i], inc)
    if cuda_peaks:
        for name, row in acc.items():
            for ph in ("forward", "backward"):
                v = cuda_peaks.get((name, ph))
                row[f"{ph}_allocated_peak_bytes"] = None if v is None else baseline + v
    return list(acc.values())


def build_profile(
    record: StepRecord,
    *,
    name: str,
    batch_size: int,
    input_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    optimizer: str,
    mode: str,
    simulate_cuda: bool = False,
    expandable_segments: bool = False,
) -> StepProfile:
    """Turn a :class:`StepRecord` into a :class:`StepProfile` (peaks, breakdown, modules)."""
    from ..recording.cuda_allocator import NOT_MODELLED_CUDA, simulate_cuda_allocator

    tracker = record.tracker
    timeline = tracker.timeline()
    total = timeline.total
    phases = {p: (s, e) for p, s, e in timeline.phases}
    step_start = phases["forward"][0]
    baseline = int(total[step_start])
    attributed_peak_idx = int(step_start + np.argmax(total[step_start:]))
    attributed_peak = int(total[attributed_peak_idx])
    act = activation_bytes(timeline.by_category)
    activation_peak_idx = int(step_start + np.argmax(act[step_start:]))
    activation_peak = int(act[activation_peak_idx])
    non_state = [c for c in TRACKED_CATEGORIES if c not in STATE_CATEGORIES]
    holders = [
        {"category": c, "module": o, "bytes": b}
        for c, o, b in tracker.holders_at(activation_peak_idx, non_state)[:10]
    ]
    notes: list[str] = []
    reserved_peak: int | None = None
    alloc_timeline = None
    cuda_module_peaks: dict[tuple[str, str], int] = {}
    phase_rows: dict[str, dict[str, int | None]] = {}
    for ph in PHASES:
        s, e = phases[ph]
        phase_rows[ph] = {"peak_bytes": None, "attributed_peak_bytes": int(total[s : e + 1].max())}

    if record.allocator is not None:
        res = record.allocator
        peak = baseline + res.peak_increase
        peak_idx = attributed_peak_idx
        if res.reserved_peak_increase is not None:
            reserved_peak = baseline + res.reserved_peak_increase
        for ph in PHASES:
            if ph in res.phase_peak_increase:
                phase_rows[ph]["peak_bytes"] = baseline + res.phase_peak_increase[ph]
        cuda_module_peaks = res.module_peak_increase
        if res.times_s is not None and res.live_increase is not None:
            alloc_timeline = (res.times_s, baseline + res.live_increase)
        if res.peak_op:
            notes.append(f"the allocator peak was reached inside {res.peak_op}")
        if device.type == "cuda":
            notes.append("CUDA peaks are max_memory_allocated above the bytes live at the start, plus the resident state")
    elif simulate_cuda:
        kernels = record.kernels
        lives = [
            (life.start, life.end, life.nbytes) for lives in tracker.lives.values() for life in lives
        ]
        transient = []
        if kernels is not None:
            lives += kernels.persistent_lives()
            transient = kernels.transient_allocations()
        allocated, reserved = simulate_cuda_allocator(lives, len(total), transient=transient,
                                                      expandable_segments=expandable_segments)
        peak_idx = int(step_start + np.argmax(allocated[step_start:]))
        peak = int(allocated[peak_idx])
        reserved_peak = int(reserved[step_start:].max())
        for ph in PHASES:
            s, e = phases[ph]
            phase_rows[ph]["peak_bytes"] = int(allocated[s : e + 1].max())
        notes.append("CUDA caching-allocator model"
                     + (" (expandable segments)" if expandable_segments else "")
                     + "; predictions not yet checked on a GPU; not modelled: " + "; ".join(NOT_MODELLED_CUDA))
        if kernels is not None:
            notes += kernels.notes()
    else:
        peak, peak_idx = attributed_peak, attributed_peak_idx
        for ph in PHASES:
            phase_rows[ph]["peak_bytes"] = phase_rows[ph]["attributed_peak_bytes"]
        kernels = record.kernels
        if kernels is not None:
            inside, where = kernels.peak_inside_ops(total, step_start)
            if inside > peak:
                peak = inside
                notes.append(f"the estimated peak falls inside {where.op.replace('.default', '')} "
                             f"(kernel scratch {format_bytes(where.scratch, 'MiB')}, memprof.recording.workspace)")
            for ph in PHASES:
                s, e = phases[ph]
                phase_rows[ph]["peak_bytes"] = max(phase_rows[ph]["attributed_peak_bytes"] or 0,
                                                   kernels.peak_inside_ops(total, s, e)[0])
            notes += kernels.notes()
        elif mode == "estimated":
            notes.append("estimate of tensor-owned bytes; memory no tensor owns (kernel workspaces) is not included")

    at_peak = timeline.at(peak_idx)
    at_peak[Category.UNATTRIBUTED.value] = peak - sum(at_peak.values())  # kernel scratch, rounding
    return StepProfile(
        model=name,
        batch_size=batch_size,
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        optimizer=optimizer,
        mode=mode,
        peak_bytes=int(peak),
        attributed_peak_bytes=attributed_peak,
        activation_peak_bytes=activation_peak,
        at_peak=at_peak,
        phases=phase_rows,
        modules=_module_rows(tracker, total, cuda_module_peaks, baseline),
        step_time_s=record.step_time_s,
        reserved_peak_bytes=reserved_peak,
        input_shape=input_shape,
        activation_peak_holders=holders,
        notes=notes,
        timeline=timeline,
        allocator_timeline=alloc_timeline,
    )


# ---------------------------------------------------------------------------------------------
def check_step_args(
    batch_size: Any, input_shape: Any, optimizer: Any, dtype: Any, device: Any, estimate: bool
) -> tuple[int, tuple[int, ...], str, torch.dtype, torch.device]:
    """All argument checks of :func:`profile_step` in one place, before any work.

    Raises:
        UsageError: naming the bad value and the allowed ones.
    """
    batch_size = check_positive_int("batch size", batch_size)
    if input_shape is None or len(input_shape) == 0:
        raise UsageError("input shape is required for a model that is not registered, e.g. --input-shape 3,32,32")
    shape = tuple(check_positive_int("input shape dimension", d) for d in input_shape)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    try:
        dt = parse_dtype(dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N") from None
    check_choice("device type", dev.type, ("cpu", "cuda"))
    if dev.type == "cuda" and not estimate and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available; use --estimate or --device cpu")
    if dev.type == "cuda" and dev.index is None and not estimate:
        dev = torch.device("cuda", torch.cuda.current_device())
    return batch_size, shape, optimizer, dt, dev


def _warm_up(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, make_targets: Callable[[Any], Any]
) -> torch.Tensor | None:
    """One step that creates the optimizer state; returns the targets it drew."""
    try:
        out = model(x)
    except (RuntimeError, ValueError, IndexError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"the model rejects an input of shape {tuple(x.shape[1:])} (batch {x.shape[0]}, "
            f"{str(x.dtype).replace('torch.', '')}, {x.device.type}): {msg}"
        ) from None
    targets = make_targets(out)
    loss = compute_loss(out, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    del out, loss
    return targets


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


def _targets_for(batch_size: int, device: torch.device, seed: int) -> Callable[[Any], Any]:
    def make(out: Any) -> torch.Tensor | None:
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = next(iter(out.values()))
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            return None
        g = torch.Generator().manual_seed(seed + 1)
        t = torch.randint(out.shape[1], (batch_size,), generator=g)
        return t.to(device)

    return make


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
        The :class:`StepProfile`.

    Raises:
        UsageError: for a bad argument, or an input shape the model rejects.
    """
    batch_size, shape, optimizer, dt, dev = check_step_args(batch_size, input_shape, optimizer, dtype, device, estimate)
    if not isinstance(model, nn.Module):
        raise UsageError(f"expected an nn.Module, got {type(model).__name__}")
    name = name or type(model).__name__
    if estimate:
        from torch._subclasses.fake_tensor import FakeTensorMode

        from ..recording.estimate import DeviceKernels, make_fake_model

        # NOTE [ CUDA estimates without a GPU ]
        # Fake CUDA tensors can be created without a GPU, but the autograd engine needs a CUDA
        # context to run their backward. Without a GPU the step is traced with fake CPU tensors
        # (the same ops and storage sizes, except cuDNN-specific extras such as the batch-norm
        # reserve space) and the caching-allocator model is applied to that trace.
        trace_dev = dev if dev.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")
        mode = FakeTensorMode()
        work = make_fake_model(model, mode, trace_dev, dt)
        work.train()
        with mode, _quiet_fake_tensor_log():
            x = torch.empty((batch_size, *shape), dtype=dt, device=trace_dev)
            opt = make_optimizer(optimizer, work.parameters())
            with DeviceKernels(dev.type, trace_dev.type):  # warm-up: the real LSTM workspace, too
                targets = _warm_up(work, opt, x, _targets_for(batch_size, trace_dev, seed))
            with DeviceKernels(dev.type, trace_dev.type) as kernels:
                record = measure_step(work, opt, x, targets, kernels=kernels)
        profile = build_profile(
            record, name=name, batch_size=batch_size, input_shape=shape, device=dev, dtype=dt,
            optimizer=optimizer, mode="estimated", simulate_cuda=dev.type == "cuda",
            expandable_segments=expandable_segments,
        )
        if trace_dev != dev:
            profile.notes.append("no GPU here: the step was traced with CPU kernels (NOTE [ CUDA estimates without a GPU ])")
        return profile
    work = copy.deepcopy(model).to(device=dev, dtype=dt)
    work.train()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *shape), generator=g).to(device=dev, dtype=dt)
    opt = make_optimizer(optimizer, work.parameters())
    targets = _warm_up(work, opt, x, _targets_for(batch_size, dev, seed))
    record = measure_step(work, opt, x, targets, allocator=make_allocator_tracker(dev))
    return build_profile(
        record, name=name, batch_size=batch_size, input_shape=shape, device=dev, dtype=dt,
        optimizer=optimizer, mode="measured",
    )


def fitted_figure(profile: StepProfile) -> tuple[str, int]:
    """``(name, bytes)`` of the figure :func:`fit_batch_size` holds to the budget."""
    if profile.device.startswith("cuda") and profile.reserved_peak_bytes is not None:
        return "predicted max_memory_reserved", profile.reserved_peak_bytes
    return "estimated allocator peak", profile.peak_bytes


def fit_batch_size(
    model: nn.Module,
    memory: int,
    input_shape: Sequence[int],
    *,
    optimizer: str = "sgd",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    name: str | None = None,
    max_batch_size: int = 1 << 24,
    expandable_segments: bool = False,
) -> tuple[int, StepProfile]:
    """The largest batch size whose estimated step peak fits ``memory`` bytes.

    The figure fitted (:func:`fitted_figure`): on the CPU the estimated allocator peak (tensors
    plus kernel scratch, memprof.recording.workspace); on CUDA the predicted
    ``max_memory_reserved``, which is what the device must hold (reserved >= allocated).

    Every probe is an estimate (FakeTensorMode: no memory). The step's peak is a maximum of
    functions affine in the batch size, so it is convex and piecewise linear: the line through
    two fitting probes, extended to the budget, never undershoots the answer. The search grows
    along that line (at least doubling) until a probe fails, then narrows the bracket with the
    line between its ends, halving it whenever that gains less than bisection would; a few
    probes usually suffice where plain bisection up to millions would take forty.

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
    probes: dict[int, StepProfile] = {}

    def peak(b: int) -> int:
        if b not in probes:
            probes[b] = profile_step(model, b, input_shape, optimizer=optimizer, dtype=dtype, device=device,
                                     estimate=True, name=name, expandable_segments=expandable_segments)
        return fitted_figure(probes[b])[1]

    if peak(1) > memory:
        what, need = fitted_figure(probes[1])
        raise UsageError(f"even batch 1 needs {format_bytes(need, 'MiB')} ({what}), more than the budget "
                         f"{format_bytes(memory, 'MiB')} ({memory} bytes)")
    lo, hi = 1, None
    prev = None
    while hi is None and lo < max_batch_size:
        if prev is None:
            guess = 2 * lo
        else:
            slope = (peak(lo) - peak(prev)) / (lo - prev)
            guess = lo + int((memory - peak(lo)) / slope) if slope > 0 else 2 * lo
            guess = max(guess, 2 * lo) if peak(lo) < memory else lo + 1
        guess = min(guess, max_batch_size)
        if peak(guess) <= memory:
            prev, lo = lo, guess
        else:
            hi = guess
    if hi is None:
        return lo, probes[lo]
    while hi - lo > 1:
        f_lo, f_hi = peak(lo), peak(hi)
        mid = lo + int((memory - f_lo) * (hi - lo) / (f_hi - f_lo)) if f_hi > f_lo else (lo + hi) // 2
        mid = min(max(mid, lo + 1), hi - 1)
        width = hi - lo
        if peak(mid) <= memory:
            lo = mid
        else:
            hi = mid
        if hi - lo > width // 2 and hi - lo > 1:  # the line gained little: bisect once
            half = (lo + hi) // 2
            if peak(half) <= memory:
                lo = half
            else:
                hi = half
    return lo, probes[lo]
