"""Allocator-level truth: every byte the allocator handed out during a step, tensor-owned or not.

- CPU: :class:`CpuAllocatorTracker` runs the step under ``torch.profiler`` with
  ``profile_memory=True``. The c10 CPU allocator reports every allocation and every free to the
  profiler (a signed byte count per event), whatever caused it: op outputs, kernel scratch
  buffers, storages freed by ``UntypedStorage.resize_(0)``. Sorting the events by time and
  accumulating them gives the live bytes over the step and its exact peak. Phases are marked
  with ``record_function`` ranges on the same clock.
- CUDA: :class:`CudaAllocatorTracker` reads ``torch.cuda.max_memory_allocated`` and
  ``max_memory_reserved`` around every phase and every module's forward and backward (reset the
  peak, run, read it), nesting handled by folding each reading into every interval still open.

Both report peaks as *increases* over the bytes live when tracking started; the caller adds the
step's resident state (parameters, optimizer state, input batch) that was already there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "AllocatorResult",
    "ConvScratch",
    "CpuAllocatorTracker",
    "CudaAllocatorTracker",
    "OpScratch",
    "conv_backward_scratch",
    "measure_op_scratch",
    "make_allocator_tracker",
]

_PHASE_PREFIX = "memprof::"


@dataclass
class AllocatorResult:
    """What an allocator tracker measured, relative to the bytes live when tracking started.

    Attributes:
        peak_increase: the highest live bytes above the start.
        reserved_peak_increase: the same for reserved memory (CUDA caching allocator), else None.
        phase_peak_increase: per phase ("forward", "backward", "optimizer").
        module_peak_increase: per (module name, "forward"/"backward") on CUDA; empty on the CPU.
        times_s: time of each sample since the start (CPU), for plots.
        live_increase: live bytes above the start after each sample (CPU).
    """

    peak_increase: int
    reserved_peak_increase: int | None = None
    phase_peak_increase: dict[str, int] = field(default_factory=dict)
    module_peak_increase: dict[tuple[str, str], int] = field(default_factory=dict)
    times_s: np.ndarray | None = None
    live_increase: np.ndarray | None = None
    #: the outermost ATen op running when the peak was reached (CPU), e.g. "aten::convolution_backward"
    peak_op: str | None = None


class CpuAllocatorTracker:
    """Exact live bytes at the c10 CPU allocator during a block, from the profiler's memory events."""

    def __init__(self) -> None:
        self._prof: torch.profiler.profile | None = None
        self.result: AllocatorResult | None = None

    @contextlib.contextmanager
    def track(self) -> Iterator[CpuAllocatorTracker]:
        """Profile the body; :attr:`result` is filled on exit (not on error)."""
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        with prof:
            yield self
        self.result = self._replay(prof)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a phase on the profiler's clock."""
        with torch.profiler.record_function(_PHASE_PREFIX + name):
            yield

    # The module intervals of the CPU come from the storage tracker; these are no-ops.
    def open(self, tag: tuple[str, str]) -> None:  # noqa: D102
        pass

    def close(self, tag: tuple[str, str]) -> None:  # noqa: D102
        pass

    @staticmethod
    def _replay(prof: torch.profiler.profile) -> AllocatorResult:
        events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        mem: list[tuple[int, int]] = []
        ranges: dict[str, tuple[int, int]] = {}
        ops: list[tuple[int, int, str]] = []
        for e in events:
            name = e.name()
            if name == "[memory]":
                if e.device_type() == torch.autograd.DeviceType.CPU:
                    mem.append((e.start_ns(), e.nbytes()))
            elif name.startswith(_PHASE_PREFIX):
                ranges[name[len(_PHASE_PREFIX):]] = (e.start_ns(), e.end_ns())
            else:
                ops.append((e.start_ns(), e.end_ns(), name))
        mem.sort(key=lambda x: x[0])  # stable: same-time events keep the allocator's order
        times = np.array([t for t, _ in mem], dtype=np.int64)
        live = np.cumsum(np.array([b for _, b in mem], dtype=np.int64)) if mem else np.zeros(0, np.int64)
        peak = int(max(0, live.max())) if len(live) else 0
        phase_peaks: dict[str, int] = {}
        for name, (start, end) in ranges.items():
            i0, i1 = np.searchsorted(times, start, "left"), np.searchsorted(times, end, "right")
            before = int(live[i0 - 1]) if i0 > 0 else 0
            inside = int(live[i0:i1].max()) if i1 > i0 else before
            phase_peaks[name] = max(before, inside)
        peak_op = None
        if len(live) and peak > 0:
            t_peak = int(times[int(np.argmax(live))])
            # the outermost ATen op running at the peak (inner ones are its own allocations)
            covering = [(end - start, name) for start, end, name in ops
                        if start <= t_peak <= end and name.startswith("aten::")]
            peak_op = max(covering)[1] if covering else None
        t0 = times[0] if len(times) else 0
        return AllocatorResult(
            peak_op=peak_op,
            peak_increase=peak,
            phase_peak_increase=phase_peaks,
            times_s=(times - t0) / 1e9,
            live_increase=live,
        )


class CudaAllocatorTracker:
    """Peaks of the CUDA caching allocator per step, phase and module interval.

    Args:
        device: the CUDA device measured.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._open: dict[tuple[str, str], list[list[int]]] = {}
        self._closed: dict[tuple[str, str], list[int]] = {}
        self._start_alloc = 0
        self._start_reserved = 0
        self._active = False
        self.result: AllocatorResult | None = None

    def _fold(self) -> None:
        # NOTE [ Nested peak intervals on CUDA ]
        # torch.cuda.reset_peak_memory_stats has one global peak. To measure nested intervals
        # (the step, a phase, a module, its children) each boundary reads the peak since the last
        # boundary, folds it into every interval still open, then resets it.
        peak_a = torch.cuda.max_memory_allocated(self.device) - self._start_alloc
        peak_r = torch.cuda.max_memory_reserved(self.device) - self._start_reserved
        for stack in self._open.values():
            for entry in stack:
                entry[0] = max(entry[0], peak_a)
                entry[1] = max(entry[1], peak_r)
        torch.cuda.reset_peak_memory_stats(self.device)

    def open(self, tag: tuple[str, str]) -> None:
        """Start an interval (``("phase", name)`` or ``(module, "forward"/"backward")``)."""
        if not self._active:
            return
        self._fold()
        now = torch.cuda.memory_allocated(self.device) - self._start_alloc
        now_r = torch.cuda.memory_reserved(self.device) - self._start_reserved
        self._open.setdefault(tag, []).append([now, now_r])

    def close(self, tag: tuple[str, str]) -> None:
        """End the innermost open interval with this tag, keeping the highest peak per tag."""
        stack = self._open.get(tag)
        if not self._active or not stack:
            return
        self._fold()
        peak_a, _ = stack.pop()
        self._closed[tag] = [max(self._closed.get(tag, [0])[0], peak_a)]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the peak of one phase."""
        self.open(("phase", name))
        try:
            yield
        finally:
            self.close(("phase", name))

    @contextlib.contextmanager
    def track(self) -> Iterator[CudaAllocatorTracker]:
        """Measure the body; :attr:`result` is filled on exit."""
        torch.cuda.synchronize(self.device)
        self._start_alloc = torch.cuda.memory_allocated(self.device)
        self._start_reserved = torch.cuda.memory_reserved(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._active = True
        self._open[("step", "step")] = [[0, 0]]
        try:
            yield self
            torch.cuda.synchronize(self.device)
            self._fold()
            step_a, step_r = self._open.pop(("step", "step"))[0]
            self.result = AllocatorResult(
                peak_increase=step_a,
                reserved_peak_increase=step_r,
                phase_peak_increase={k[1]: v[0] for k, v in self._closed.items() if k[0] == "phase"},
                module_peak_increase={k: v[0] for k, v in self._closed.items() if k[0] != "phase"},
            )
        finally:
            self._active = False
            self._open.clear()


def make_allocator_tracker(device: torch.device) -> CpuAllocatorTracker | CudaAllocatorTracker:
    """The allocator tracker for ``device`` (CPU or CUDA).

    Raises:
        ValueError: for another device type.
    """
    if device.type == "cpu":
        return CpuAllocatorTracker()
    if device.type == "cuda":
        return CudaAllocatorTracker(device)
    raise ValueError(f"cannot measure allocator peaks on device {device}; allowed: cpu, cuda")


@dataclass
class ConvScratch:
    """What one CPU convolution backward allocates (see :func:`conv_backward_scratch`).

    Attributes:
        input_bytes: the layer's input.
        tensor_bytes: the gradient tensors the op returns (input and weight gradients).
        peak_bytes: the allocator's peak inside the backward, above the bytes live before it.
    """

    input_bytes: int
    tensor_bytes: int
    peak_bytes: int

    @property
    def scratch_bytes(self) -> int:
        """Memory the op held at its peak that no returned tensor owns (kernel workspace)."""
        return self.peak_bytes - self.tensor_bytes


def conv_backward_scratch(in_channels: int, out_channels: int, size: int, batch_size: int) -> ConvScratch:
    """Measure the workspace of one 3x3 convolution's backward on the CPU, at the allocator.

    On x86 CPUs PyTorch runs the convolution with oneDNN, whose backward reorders the input and
    the output gradient into a blocked layout: buffers that no tensor owns, which the step
    profiler reports as ``unattributed`` when the step's peak falls inside such a backward.
    """
    conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    x = torch.randn(batch_size, in_channels, size, size, requires_grad=True)
    y = conv(x)
    grad = torch.randn_like(y)
    tracker = CpuAllocatorTracker()
    with tracker.track():
        y.backward(grad)
    assert tracker.result is not None and x.grad is not None and conv.weight.grad is not None
    tensors = x.grad.untyped_storage().nbytes() + conv.weight.grad.untyped_storage().nbytes()
    return ConvScratch(x.untyped_storage().nbytes(), tensors, tracker.result.peak_increase)


@dataclass
class OpScratch:
    """What one ATen op held at its peak beyond what it left behind (see :func:`measure_op_scratch`).

    Attributes:
        op: the overload's name, e.g. ``aten.convolution_backward.default``.
        args: the op's arguments with every tensor replaced by ``(shape, dtype)``.
        scratch_bytes: allocator peak inside the op minus the larger of the live bytes before
            and after it: memory no tensor the op returns owns (kernel workspace, reorders).
        predicted_bytes: what ``predict`` said for this call (None without a prediction).
    """

    op: str
    args: tuple
    scratch_bytes: int
    predicted_bytes: int | None = None


_OP_PREFIX = "memprof_op#"


def _describe(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return (tuple(obj.shape), str(obj.dtype).replace("torch.", ""))
    if isinstance(obj, (list, tuple)):
        return tuple(_describe(o) for o in obj)
    return obj


def measure_op_scratch(
    body: Callable[[], object], predict: Callable[[object, tuple, dict, object], int | None] | None = None
) -> list[OpScratch]:
    """Run ``body`` for real on the CPU and measure every ATen op's scratch at the allocator.

    Every op that a ``TorchDispatchMode`` sees (the granularity of the storage tracker and of
    an estimate) runs inside a profiler range of its own; the profiler's memory events give the
    allocator's live bytes over time, hence each op's peak. Ops with no scratch are left out.

    Args:
        body: the code to run (e.g. a training step).
        predict: ``f(func, args, kwargs, out)`` giving a predicted scratch per call (or None),
            kept beside the measurement (calls with a prediction are kept even without scratch).

    Returns:
        One :class:`OpScratch` per op call that held scratch or has a prediction, in call order.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list[tuple[str, tuple, int | None]] = []

    class _Ranges(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            index = len(calls)
            calls.append((str(func), _describe(args), None))  # type: ignore[arg-type]
            with torch.profiler.record_function(f"{_OP_PREFIX}{index}"):
                out = func(*args, **kwargs)
            if predict is not None:
                calls[index] = (calls[index][0], calls[index][1], predict(func, args, kwargs, out))
            return out

    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with prof, _Ranges():
        body()
    mem: list[tuple[int, int]] = []
    ranges: list[tuple[int, int, int]] = []
    for e in prof.profiler.kineto_results.events():  # type: ignore[union-attr]
        name = e.name()
        if name == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU:
            mem.append((e.start_ns(), e.nbytes()))
        elif name.startswith(_OP_PREFIX):
            ranges.append((int(name[len(_OP_PREFIX):]), e.start_ns(), e.end_ns()))
    mem.sort(key=lambda x: x[0])
    times = np.array([t for t, _ in mem], dtype=np.int64)
    live = np.cumsum(np.array([b for _, b in mem], dtype=np.int64)) if mem else np.zeros(0, np.int64)
    out: list[OpScratch] = []
    for i, start, end in sorted(ranges):
        i0, i1 = int(np.searchsorted(times, start, "left")), int(np.searchsorted(times, end, "right"))
        if i1 <= i0:
            continue
        before = int(live[i0 - 1]) if i0 > 0 else 0
        scratch = int(live[i0:i1].max()) - max(before, int(live[i1 - 1]))
        op, described, predicted = calls[i]
        if scratch > 0 or predicted is not None:
            out.append(OpScratch(op, described, max(scratch, 0), predicted))
    return out
