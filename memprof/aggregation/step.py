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
from .user_step import (
    OPTIMIZER_NAMES,
    InputSpec,
    Inputs,
    StepRecipe,
    batch_size_of,
    call_model,
    default_loss,
    first_tensor,
    input_tensors,
    make_inputs,
    resize_batch,
    to_device,
)
from .user_step import make_optimizer as _make_named_optimizer

__all__ = [
    "OPTIMIZERS",
    "StepProfile",
    "fit_batch_size",
    "make_optimizer",
    "measure_step",
    "profile_step",
    "run_step",
]

#: Optimizers a profile can use by name; the deck's recipe is SGD with momentum 0.9.
OPTIMIZERS = tuple(OPTIMIZER_NAMES)
MODES = ("measured", "estimated")
PHASES = ("forward", "backward", "optimizer")


def make_optimizer(name: Any, params: Any, **settings: Any) -> torch.optim.Optimizer:
    """``sgd`` (lr 0.1, momentum 0.9: the deck's recipe), ``adam``, ``adamw`` (lr 1e-3), with
    ``settings`` over those defaults, or any ``params -> Optimizer`` callable.

    Raises:
        UsageError: for another name, listing the allowed ones.
    """
    return _make_named_optimizer(name, params, **settings)


def compute_loss(output: Any, targets: torch.Tensor | None) -> torch.Tensor:
    """The output's own ``.loss``; cross-entropy for (B, classes) logits with targets; the mean otherwise."""
    return default_loss(output, targets)


class _NullPhase:
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
        inputs: a tensor, a tuple (``model(*inputs)``) or a dict (``model(**inputs)``).
        phase_times: if given, filled with the time of each phase in seconds: CPU time of the
            process on the CPU (robust to other processes' load), wall time on CUDA (synchronised);
            repeated phases (accumulation) add up.
        recipe: loss, autocast and accumulation (default: :class:`StepRecipe`).

    Returns:
        The loss of the last micro-step (detached).
    """
    recipe = recipe or StepRecipe()
    marks = allocator if allocator is not None else _NullPhase()
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
        set_phase("forward")
        with marks.phase("forward"):
            with recipe.autocast_context(device):
                output = call_model(model, inputs)
                loss = recipe.loss(output, inputs, targets)
            if recipe.accumulation_steps > 1:
                loss = loss / recipe.accumulation_steps
            del output
        set_phase("backward")
        with marks.phase("backward"):
            loss.backward()
    set_phase("optimizer")
    with marks.phase("optimizer"):
        optimizer.step()
    if phase_times is not None:
        _sync(device)
        phase_times[last[1]] = phase_times.get(last[1], 0.0) + clock() - last[0]
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


def measure_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Inputs,
    targets: torch.Tensor | None,
    allocator: CpuAllocatorTracker | CudaAllocatorTracker | None = None,
    recipe: StepRecipe | None = None,
) -> StepRecord:
    """Run one step under the storage tracker (and the allocator tracker, if given).

    Every hook is removed on exit, also when the step raises. The loss, the gradients and the
    updated parameters are bit-identical to those of :func:`run_step` (tests check it).

    Returns:
        The :class:`StepRecord`.
    """
    tracker = StorageTracker(model, optimizer, [*input_tensors(inputs), *([targets] if targets is not None else [])])
    device = input_tensors(inputs)[0].device
    gc.collect()
    if allocator is None:
        with tracker.track():
            loss = run_step(model, optimizer, inputs, targets, tracker, recipe=recipe)
        return StepRecord(loss, tracker, None, None)
    if isinstance(allocator, CudaAllocatorTracker):
        tracker.listener = allocator
    with allocator.track():
        with tracker.track():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            loss = run_step(model, optimizer, inputs, targets, tracker, allocator, recipe=recipe)
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
) -> StepProfile:
    """Turn a :class:`StepRecord` into a :class:`StepProfile` (peaks, breakdown, modules)."""
    from ..recording.estimate import NOT_MODELLED_CUDA, simulate_cuda_allocator

    tracker = record.tracker
    timeline = tracker.timeline()
    total = timeline.total
    spans: dict[str, list[tuple[int, int]]] = {}
    for p, s, e in timeline.phases:  # a phase repeats under gradient accumulation
        spans.setdefault(p, []).append((s, e))

    def span_max(values: np.ndarray, ph: str) -> int:
        return max(int(values[s : e + 1].max()) for s, e in spans[ph])

    step_start = spans["forward"][0][0]
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
        phase_rows[ph] = {"peak_bytes": None, "attributed_peak_bytes": span_max(total, ph)}

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
        lives = [
            (life.start, life.end, life.nbytes) for lives in tracker.lives.values() for life in lives
        ]
        allocated, reserved = simulate_cuda_allocator(lives, len(total))
        peak_idx = int(step_start + np.argmax(allocated[step_start:]))
        peak = int(allocated[peak_idx])
        reserved_peak = int(reserved[step_start:].max())
        for ph in PHASES:
            phase_rows[ph]["peak_bytes"] = span_max(allocated, ph)
        notes.append("CUDA caching-allocator model; not modelled: " + "; ".join(NOT_MODELLED_CUDA))
    else:
        peak, peak_idx = attributed_peak, attributed_peak_idx
        for ph in PHASES:
            phase_rows[ph]["peak_bytes"] = phase_rows[ph]["attributed_peak_bytes"]
        if mode == "estimated":
            notes.append("estimate of tensor-owned bytes; memory no tensor owns (kernel workspaces) is not included")

    at_peak = timeline.at(peak_idx)
    at_peak[Category.UNATTRIBUTED.value] = peak - sum(at_peak.values())
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
    batch_size: Any, input_shape: Any, optimizer: Any, dtype: Any, device: Any, estimate: bool,
    *, inputs: Any = None, autocast: Any = None, accumulation_steps: Any = 1,
) -> tuple[int, tuple[int, ...], Any, torch.dtype, torch.device]:
    """All argument checks of :func:`profile_step` in one place, before any work.

    Raises:
        UsageError: naming the bad value and the allowed ones.
    """
    batch_size = check_positive_int("batch size", batch_size)
    if inputs is None:
        if input_shape is None or len(input_shape) == 0:
            raise UsageError("input shape is required for a model that is not registered, e.g. --input-shape 3,32,32 "
                             "(or give inputs / --input specs)")
        shape = tuple(check_positive_int("input shape dimension", d) for d in input_shape)
    else:
        shape = ()
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, InputSpec) for i in inputs):
            pass
        elif isinstance(inputs, (torch.Tensor, dict, tuple, list)):
            tensors = input_tensors(inputs)  # raises UsageError for another kind
            if not tensors or not any(t.dim() > 0 for t in tensors):
                raise UsageError("inputs need at least one tensor with a batch dimension")
        else:
            raise UsageError(f"inputs must be a tensor, a tuple or dict of tensors, or InputSpecs; got {type(inputs).__name__}")
    if not callable(optimizer) or isinstance(optimizer, str):
        check_choice("optimizer", optimizer, OPTIMIZERS)
    try:
        dt = parse_dtype(dtype)
        ac = parse_dtype(autocast) if autocast is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_positive_int("accumulation steps", accumulation_steps)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N") from None
    check_choice("device type", dev.type, ("cpu", "cuda"))
    if dev.type == "cuda" and not estimate and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available; use --estimate or --device cpu")
    if dev.type == "cuda" and dev.index is None and not estimate:
        dev = torch.device("cuda", torch.cuda.current_device())
    del ac
    return batch_size, shape, optimizer, dt, dev


def _describe(inputs: Inputs) -> str:
    def one(t: torch.Tensor) -> str:
        return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"

    if isinstance(inputs, torch.Tensor):
        return one(inputs)
    if isinstance(inputs, dict):
        return ", ".join(f"{k}: {one(v)}" for k, v in inputs.items() if isinstance(v, torch.Tensor))
    return ", ".join(one(v) for v in inputs if isinstance(v, torch.Tensor))


def _warm_up(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Inputs, make_targets: Callable[[Any], Any],
    recipe: StepRecipe | None = None,
) -> torch.Tensor | None:
    """One step that creates the optimizer state; returns the targets it drew."""
    recipe = recipe or StepRecipe()
    device = input_tensors(x)[0].device
    try:
        with recipe.autocast_context(device):
            out = call_model(model, x)
            targets = make_targets(out) if recipe.loss_fn is None else None
            loss = recipe.loss(out, x, targets)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(x, torch.Tensor):
            raise UsageError(
                f"the model rejects an input of shape {tuple(x.shape[1:])} (batch {x.shape[0]}, "
                f"{str(x.dtype).replace('torch.', '')}, {x.device.type}): {msg}"
            ) from None
        raise UsageError(f"the model rejects inputs {_describe(x)} ({device.type}): {msg}") from None
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
        from .user_step import output_loss

        if output_loss(out) is not None:
            return None
        try:
            out = first_tensor(out)
        except UsageError:
            return None
        if out.dim() != 2:
            return None
        g = torch.Generator().manual_seed(seed + 1)
        t = torch.randint(out.shape[1], (batch_size,), generator=g)
        return t.to(device)

    return make


def _batch(inputs: Any, batch_size: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
           seed: int) -> Inputs:
    """The step's input batch on ``device``: from specs, example tensors, or the float shape."""
    if inputs is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch_size, *shape), generator=g).to(device=device, dtype=dtype)
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, InputSpec) for i in inputs):
        batch = make_inputs(list(inputs), batch_size, torch.device("cpu"), seed)
    else:
        batch = resize_batch(inputs, batch_size)
    return to_device(batch, device, dtype)


def _label(optimizer: Any) -> str:
    return optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", type(optimizer).__name__)


def profile_step(
    model: nn.Module,
    batch_size: int = 32,
    input_shape: Sequence[int] | None = None,
    *,
    inputs: Any = None,
    loss_fn: Callable[[Any, Inputs], torch.Tensor] | None = None,
    optimizer: str | Callable[[Any], torch.optim.Optimizer] = "sgd",
    optimizer_settings: dict[str, Any] | None = None,
    dtype: str | torch.dtype = "float32",
    autocast: str | torch.dtype | None = None,
    accumulation_steps: int = 1,
    device: str | torch.device = "cpu",
    estimate: bool = False,
    name: str | None = None,
    seed: int = 0,
) -> StepProfile:
    """Measure (or estimate) the memory of one steady-state training step.

    The model is not modified: the step runs on a copy (a fake copy when estimating).

    Args:
        model: any ``nn.Module``.
        batch_size: samples per step.
        input_shape: shape of one float sample (e.g. ``(3, 32, 32)``), when ``inputs`` is not given.
        inputs: example inputs (a tensor, a tuple of tensors for ``model(*inputs)``, a dict for
            ``model(**inputs)``; any dtype, e.g. token ids), their batch dimension repeated or cut
            to ``batch_size``; or a list of :class:`memprof.aggregation.user_step.InputSpec`.
            Floating-point inputs take ``dtype``; integer inputs keep theirs.
        loss_fn: ``loss_fn(output, inputs) -> loss``; default: the output's ``.loss`` attribute
            or key, else cross-entropy for 2-D logits against drawn targets, else the mean.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"``, or ``params -> Optimizer``.
        optimizer_settings: keyword arguments for a named optimizer (``lr``, ``weight_decay``...).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for parameters and float inputs.
        autocast: run forward and loss under ``torch.autocast`` with this dtype (None: off).
        accumulation_steps: forward and backward this many times per optimizer step.
        device: ``cpu`` or ``cuda`` (a CUDA estimate needs no GPU).
        estimate: run under FakeTensorMode instead of allocating.
        name: the model name shown (default: the class name).
        seed: seeds the input batch and targets.

    Returns:
        The :class:`StepProfile`.

    Raises:
        UsageError: for a bad argument, or inputs the model rejects.
    """
    batch_size, shape, optimizer, dt, dev = check_step_args(
        batch_size, input_shape, optimizer, dtype, device, estimate,
        inputs=inputs, autocast=autocast, accumulation_steps=accumulation_steps)
    if not isinstance(model, nn.Module):
        raise UsageError(f"expected an nn.Module, got {type(model).__name__}")
    name = name or type(model).__name__
    recipe = StepRecipe(loss_fn, parse_dtype(autocast) if autocast is not None else None, int(accumulation_steps))
    settings = dict(optimizer_settings or {})
    label = _label(optimizer)
    if estimate:
        from torch._subclasses.fake_tensor import FakeTensorMode

        from ..recording.estimate import make_fake_model

        # NOTE [ CUDA estimates without a GPU ]
        # Fake CUDA tensors can be created without a GPU, but the autograd engine needs a CUDA
        # context to run their backward. Without a GPU the step is traced with fake CPU tensors
        # (the same ops and storage sizes, except cuDNN-specific extras such as the batch-norm
        # reserve space) and the caching-allocator model is applied to that trace.
        trace_dev = dev if dev.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")
        mode = FakeTensorMode()
        work = make_fake_model(model, mode, trace_dev, dt)
        work.train()
        real = _batch(inputs, batch_size, shape, torch.device("cpu"), dt, seed)
        with mode, _quiet_fake_tensor_log():
            x = _map_fake(real, mode, trace_dev)
            opt = make_optimizer(optimizer, work.parameters(), **settings)
            targets = _warm_up(work, opt, x, _targets_for(batch_size, trace_dev, seed), recipe)
            record = measure_step(work, opt, x, targets, recipe=recipe)
        profile = build_profile(
            record, name=name, batch_size=batch_size, input_shape=_sample_shape(x, shape), device=dev, dtype=dt,
            optimizer=label, mode="estimated", simulate_cuda=dev.type == "cuda",
        )
        if trace_dev != dev:
            profile.notes.append("no GPU here: the step was traced with CPU kernels (NOTE [ CUDA estimates without a GPU ])")
        return profile
    work = copy.deepcopy(model).to(device=dev, dtype=dt)
    work.train()
    x = _batch(inputs, batch_size, shape, dev, dt, seed)
    opt = make_optimizer(optimizer, work.parameters(), **settings)
    targets = _warm_up(work, opt, x, _targets_for(batch_size, dev, seed), recipe)
    record = measure_step(work, opt, x, targets, allocator=make_allocator_tracker(dev), recipe=recipe)
    return build_profile(
        record, name=name, batch_size=batch_size, input_shape=_sample_shape(x, shape), device=dev, dtype=dt,
        optimizer=label, mode="measured",
    )


def _sample_shape(x: Inputs, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One sample's shape of the first input (for the report)."""
    return shape or tuple(next(t for t in input_tensors(x) if t.dim() > 0).shape[1:])


def _map_fake(real: Inputs, mode: Any, device: torch.device) -> Inputs:
    """Fake copies of real inputs (same shapes and dtypes, no memory), on ``device``."""
    def fake(t: torch.Tensor) -> torch.Tensor:
        return mode.from_tensor(t).to(device)

    if isinstance(real, torch.Tensor):
        return fake(real)
    if isinstance(real, dict):
        return {k: fake(v) if isinstance(v, torch.Tensor) else v for k, v in real.items()}
    return tuple(fake(v) if isinstance(v, torch.Tensor) else v for v in real)


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
    **step: Any,
) -> tuple[int, StepProfile | None]:
    """The largest batch size whose estimated step peak fits ``memory`` bytes.

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
        step: further arguments of :func:`profile_step` (``inputs``, ``loss_fn``,
            ``optimizer_settings``, ``autocast``, ``accumulation_steps``).

    Returns:
        ``(batch_size, profile at that size)``; ``(0, None)`` when not even batch 1 fits.

    Raises:
        UsageError: for a bad argument.
    """
    memory = check_positive_int("memory budget (bytes)", memory)
    check_step_args(1, input_shape, optimizer, dtype, device, True, inputs=step.get("inputs"),
                    autocast=step.get("autocast"), accumulation_steps=step.get("accumulation_steps", 1))
    probes: dict[int, StepProfile] = {}

    def peak(b: int) -> int:
        if b not in probes:
            probes[b] = profile_step(model, b, input_shape, optimizer=optimizer, dtype=dtype, device=device,
                                     estimate=True, name=name, **step)
        return probes[b].peak_bytes

    if peak(1) > memory:
        return 0, None
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
