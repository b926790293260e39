"""Record the user's own training loop: allocator events, module boundaries, steps.

:class:`SessionRecorder` is what :func:`memprof.track` runs around arbitrary code. Nothing in
the user's code changes: it borrows PyTorch's *global* hooks for the time of the block and
gives them back in ``finally`` (also when the user's code raises):

- ``torch.nn.modules.module.register_module_forward_pre_hook`` / ``..._forward_hook``: module
  boundaries of every module of every model that runs (names from the first module called
  with nothing else running: the root), and the backward boundaries (one tensor hook on a
  module's first output and first input that need a gradient);
- ``torch.optim.optimizer.register_optimizer_step_pre_hook`` / ``..._post_hook``: the
  optimizer phase, and the end of a training step (consecutive ``optimizer.step()`` calls with
  no forward between them, as with two optimizers, end one step together);
- ``torch.autograd.backward`` (wrapped for the block): the start of the backward phase;
- ``torch.autograd.graph.saved_tensors_hooks``: which storages autograd holds for backward,
  and until when (the activations);
- ``torch.profiler`` with ``profile_memory=True``: every allocation and free of the c10
  allocator with its address and size, exact whatever caused it (see
  :mod:`memprof.recording.allocations`).

# NOTE [ Why the default mode needs no dispatch mode ]
# The per-op ``TorchDispatchMode`` of :class:`memprof.recording.attribution.StorageTracker`
# costs 7-15 us of Python per ATen op before doing anything, which is 6-14x a plain step on
# small models. Everything a profile reports can be had from cheaper sources: the allocator
# already reports each block with its address to the profiler (about 1 us per op, in C++), and
# the roles of the blocks are known from a few Python calls per *module*, per *saved tensor*
# and per *step*: parameters, gradients and optimizer state are the storages of the models and
# optimizers seen, identified by their address while the block is alive; activations are the
# blocks autograd saved (pack hook) until it lets them go (the packed object dies). The fine
# mode adds the per-op dispatch mode back for the one thing it alone can see: which blocks a
# tensor owns, so that kernel workspaces are told apart from temporaries.

# NOTE [ Fine mode and wrapped scalars ]
# Under any Python dispatch mode, an op called with a Python number (``t.add_(1)``, most of an
# optimizer's arithmetic) wraps the number into an 8-byte tensor outside the mode, receives it
# back as a number in ``__torch_dispatch__`` and wraps it again for the real call: 8 more bytes
# while the op runs. A fine-mode peak that falls inside such an op is 8 bytes above the fast
# mode's (seen with AdamW: ViT, timm, BERT in tests/test_track_models.py); the fast mode
# changes no allocation at all, which is why it is the default and the reference.

Python-side events carry ``time.time_ns()``; the profiler's events are on the same clock
(its approximate clock is converted to Unix time), sub-microsecond apart in practice: events
are only ever compared with blocks that are alive for much longer, by address.

Known limitations:
- Storages freed during the block that were allocated before it are not seen to go (the CPU
  allocator does not report frees of blocks allocated before profiling started): such a
  storage of a model or optimizer (e.g. gradients of a step run before ``track()`` and freed
  by ``zero_grad``) is counted until the end of the step where it was last seen.
- ``torch.profiler`` cannot run inside the block (two profiling sessions do not nest in
  PyTorch: the inner one ends the outer one); ``track()`` refuses it with a clear error.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..vocabulary import TrackMode
from .tensors import NO_STORAGE, storages, tensors_in

__all__ = [
    "MemoryEvents",
    "SessionLog",
    "SessionRecorder",
    "StopRecording",
]


class StopRecording(BaseException):
    """Raised from a hook to end the user's code after the requested number of steps.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in user code does
    not swallow it.
    """


_ACTIVE: list[SessionRecorder] = []  # the recorder running (track() does not nest)


@dataclass
class MemoryEvents:
    """The allocator's events of the block, in time order (frees have negative sizes)."""

    times: np.ndarray  # int64 ns
    ptrs: np.ndarray  # int64 block address
    deltas: np.ndarray  # int64 bytes (+ allocation, - free)

    @property
    def live(self) -> np.ndarray:
        """Live bytes above the start of the block, after each event."""
        return np.cumsum(self.deltas) if len(self.deltas) else np.zeros(0, np.int64)


@dataclass
class StepMarks:
    """Boundaries of one training step on the event clock (ns)."""

    start: int
    end: int
    phases: list[tuple[str, int, int]] = field(default_factory=list)
    #: (module name, "forward"/"backward", start ns, end ns)
    intervals: list[tuple[str, str, int, int]] = field(default_factory=list)
    #: category -> {address: bytes} of the state storages alive at the end of the step
    state: dict[str, dict[int, int]] = field(default_factory=dict)
    #: (address, bytes) of the tensors passed to the models
    inputs: list[tuple[int, int]] = field(default_factory=list)
    optimizers: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    dtype: str = ""
    device: str = "cpu"
    cpu_time_s: float = 0.0


@dataclass
class SessionLog:
    """Everything :class:`SessionRecorder` recorded, for :mod:`memprof.aggregation.tracked`."""

    mode: TrackMode
    device: torch.device
    steps: list[StepMarks]
    memory: MemoryEvents
    #: [address, packed ns, released ns or None] of every tensor autograd saved
    saved: list[list[Any]]
    #: (ns, address) of every op output (fine mode only)
    owned: list[tuple[int, int]]
    module_types: dict[str, str]
    #: True when the code never called optimizer.step(): the whole block is one step
    no_optimizer_step: bool = False
    #: the block ended by an exception (user error or StopRecording)
    stopped_early: bool = False


class _Saved:
    """What the pack hook returns: the tensor, and a note of the time autograd lets it go."""

    __slots__ = ("tensor", "_record", "__weakref__")

    def __init__(self, tensor: torch.Tensor, record: list[Any]) -> None:
        self.tensor = tensor
        self._record = record

    def __del__(self) -> None:
        rec = self._record
        if rec[2] is None:
            rec[2] = time.time_ns()


class _OwnershipMode(TorchDispatchMode):
    """Fine mode: the address of every op output's storage, with the time it was seen."""

    def __init__(self, owned: list[tuple[int, int]]) -> None:
        super().__init__()
        self.owned = owned

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        now = time.time_ns()
        for t in (out,) if isinstance(out, torch.Tensor) else (out if isinstance(out, (list, tuple)) else ()):
            if isinstance(t, torch.Tensor):
                try:
                    self.owned.append((now, t.untyped_storage().data_ptr()))
                except NO_STORAGE:
                    pass
        return out


def _first_grad_tensor(obj: Any) -> torch.Tensor | None:
    """The first non-leaf tensor needing a gradient in nested args (hooks on leaves would stay)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.requires_grad and obj.grad_fn is not None else None
    if isinstance(obj, dict):
        obj = list(obj.values())
    elif hasattr(obj, "to_tuple") and callable(obj.to_tuple):  # transformers ModelOutput
        obj = obj.to_tuple()
    if isinstance(obj, (list, tuple)):
        for o in obj:
            t = _first_grad_tensor(o)
            if t is not None:
                return t
    return None


def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    """(address, bytes) of the storage behind ``t``, None for tensors without one."""
    for st, _ in storages((t,)):
        try:
            ptr = st.data_ptr()
        except NO_STORAGE:
            return None
        return (ptr, int(st.nbytes())) if ptr else None
    return None


class SessionRecorder:
    """Borrow PyTorch's global hooks and the profiler for a block of user code.

    Use as a context manager (see :func:`memprof.track`, which also turns the log into step
    profiles)::

        rec = SessionRecorder()
        with rec:
            train()          # any code: a step ends at each optimizer.step()
        log = rec.log        # SessionLog (also after the code raised)

    Args:
        mode: :class:`TrackMode`.
        device: the device whose allocator is read (``cpu`` or ``cuda[:N]``).
        max_steps: raise :class:`StopRecording` once this many steps have ended (None: never).
    """

    def __init__(self, mode: TrackMode = TrackMode.FAST, device: torch.device | str = "cpu",
                 max_steps: int | None = None) -> None:
        self.mode = TrackMode(mode)
        self.device = torch.device(device)
        self.max_steps = max_steps
        self.log: SessionLog | None = None
        self._handles: list[Any] = []
        self._names: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        self._module_types: dict[str, str] = {}
        self._roots: list[weakref.ref[nn.Module]] = []
        self._root_labels: set[str] = set()
        self._optimizers: list[weakref.ref[torch.optim.Optimizer]] = []
        self._stack: list[tuple[str, str, int]] = []
        self._bw_open: dict[str, list[int]] = {}
        self._backward_depth = 0
        self._steps: list[StepMarks] = []
        self._saved: list[list[Any]] = []
        self._owned: list[tuple[int, int]] = []
        self._active = False
        self._prof: Any = None
        self._patched: list[tuple[Any, str, Any]] = []
        self._saved_hooks: Any = None
        self._dispatch: _OwnershipMode | None = None
        self._new_step(time.time_ns())

    # ---- steps and phases ----------------------------------------------------------------
    def _new_step(self, t: int) -> None:
        self._cur = StepMarks(start=t, end=t)
        self._phase: tuple[str, int] | None = None
        self._pending_end: int | None = None
        self._cpu0 = time.process_time()

    def _set_phase(self, name: str | None, t: int) -> None:
        if self._phase is not None:
            self._cur.phases.append((self._phase[0], self._phase[1], t))
            if self._phase[0] == "backward":
                for mod, starts in self._bw_open.items():  # modules whose inputs need no gradient
                    while starts:
                        self._cur.intervals.append((mod, "backward", starts.pop(), t))
        self._phase = (name, t) if name is not None else None

    def _close_step(self, end: int) -> None:
        """End the current step at ``end`` (the last optimizer.step()'s end)."""
        self._set_phase(None, end)
        cur = self._cur
        cur.end = end
        cur.cpu_time_s = time.process_time() - self._cpu0
        if self._pending_end is None:  # no optimizer.step() ended it: collect what is alive now
            self._collect_state(cur)
        self._steps.append(cur)
        self._new_step(end)

    def _collect_state(self, marks: StepMarks) -> None:
        """Addresses of parameters, gradients and optimizer state alive now (end of a step)."""
        params: dict[int, int] = {}
        grads: dict[int, int] = {}
        state: dict[int, int] = {}
        dtype = ""

        def put(into: dict[int, int], t: torch.Tensor) -> bool:
            """Record t's storage (address -> bytes) in ``into``; False for a tensor without one."""
            s = _storage(t)
            if s is not None:
                into[s[0]] = s[1]
            return s is not None

        def param(p: torch.Tensor) -> None:
            nonlocal dtype
            if put(params, p):
                dtype = dtype or str(p.dtype).replace("torch.", "")
            if p.grad is not None:
                put(grads, p.grad)

        models = []
        for ref in self._roots:
            m = ref()
            if m is None:
                continue
            models.append(self._names.get(m, type(m).__name__))
            for p in m.parameters():
                param(p)
            for b in m.buffers():
                put(params, b)
        opts = []
        for ref in self._optimizers:
            opt = ref()
            if opt is None:
                continue
            opts.append(type(opt).__name__.lower())
            for group in opt.param_groups:
                for p in group["params"]:
                    param(p)
            for st in opt.state.values():
                for t in tensors_in(st):
                    s = _storage(t)
                    if s is not None and s[0] not in params:
                        state[s[0]] = s[1]
        for k in grads:
            params.pop(k, None)
        marks.state = {"parameters": params, "gradients": grads, "optimizer_state": state}
        marks.models = models
        marks.optimizers = opts
        marks.dtype = dtype

    # ---- module hooks --------------------------------------------------------------------
    def _name_of(self, module: nn.Module) -> str:
        name = self._names.get(module)
        if name is not None:
            return name
        # a module called with nothing running: a root; name its whole tree once
        label = type(module).__name__
        n = 2
        while label in self._root_labels:
            label = f"{type(module).__name__}#{n}"
            n += 1
        self._root_labels.add(label)
        self._roots.append(weakref.ref(module))
        for sub_name, sub in module.named_modules():
            if sub not in self._names:
                full = f"{label}.{sub_name}" if sub_name else label
                self._names[sub] = full
                self._module_types[full] = type(sub).__name__
        return self._names[module]

    def _pre_forward(self, module: nn.Module, args: Any) -> None:
        if not self._active:
            return
        t = time.time_ns()
        if not self._stack:
            if self._pending_end is not None:
                self._close_step(self._pending_end)
                if self.max_steps is not None and len(self._steps) >= self.max_steps:
                    raise StopRecording(f"{len(self._steps)} steps recorded")
            if self._backward_depth == 0 and (self._phase is None or self._phase[0] != "forward"):
                self._set_phase("forward", t)
        name = self._name_of(module)
        phase = "backward" if self._backward_depth else "forward"
        self._stack.append((name, phase, t))
        if torch.is_grad_enabled():
            inp = _first_grad_tensor(args)
            if inp is not None:
                inp.register_hook(self._end_backward_hook(name))

    def _post_forward(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not self._active or not self._stack:
            return
        t = time.time_ns()
        name, phase, start = self._stack.pop()
        self._cur.intervals.append((name, phase, start, t))
        if not self._stack:  # a root call: its tensor arguments are inputs
            for x in tensors_in(args, tensors_in(kwargs)):
                s = _storage(x)
                if s is not None and not isinstance(x, nn.Parameter):
                    self._cur.inputs.append(s)
                    if not self._cur.input_shape and x.dim() > 0:
                        self._cur.input_shape = tuple(x.shape)
                        self._cur.device = str(x.device)
        if torch.is_grad_enabled():
            out = _first_grad_tensor(output)
            if out is not None:
                out.register_hook(self._start_backward_hook(name))

    def _start_backward_hook(self, name: str) -> Any:
        def hook(_: torch.Tensor) -> None:
            if self._active:
                self._bw_open.setdefault(name, []).append(time.time_ns())
        return hook

    def _end_backward_hook(self, name: str) -> Any:
        def hook(_: torch.Tensor) -> None:
            starts = self._bw_open.get(name)
            if self._active and starts:
                self._cur.intervals.append((name, "backward", starts.pop(), time.time_ns()))
        return hook

    # ---- optimizer and backward ----------------------------------------------------------
    def _opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._active:
            return
        if not any(r() is opt for r in self._optimizers):
            self._optimizers.append(weakref.ref(opt))
        self._pending_end = None
        if self._phase is None or self._phase[0] != "optimizer":
            self._set_phase("optimizer", time.time_ns())

    def _opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._active:
            return
        t = time.time_ns()
        self._set_phase("other", t)
        self._pending_end = t
        # the state at the end of the step, now: the objects may be gone when the step closes
        self._collect_state(self._cur)

    def _wrap_backward(self, orig: Any) -> Any:
        rec = self

        def backward(*args: Any, **kwargs: Any) -> Any:
            if not rec._active:
                return orig(*args, **kwargs)
            outer = rec._backward_depth == 0
            if outer:
                rec._set_phase("backward", time.time_ns())
            rec._backward_depth += 1
            try:
                return orig(*args, **kwargs)
            finally:
                rec._backward_depth -= 1
                if outer and rec._active:
                    rec._set_phase("other", time.time_ns())

        backward.__wrapped__ = orig  # type: ignore[attr-defined]
        return backward

    # ---- saved tensors -------------------------------------------------------------------
    def _pack(self, t: torch.Tensor) -> Any:
        if not self._active:
            return t
        s = _storage(t)
        if s is None:
            return t
        record = [s[0], time.time_ns(), None]
        self._saved.append(record)
        return _Saved(t, record)

    @staticmethod
    def _unpack(obj: Any) -> torch.Tensor:
        return obj.tensor if isinstance(obj, _Saved) else obj

    # ---- enter / exit --------------------------------------------------------------------
    def _refuse_profiler(self, orig: Any) -> Any:
        def start(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(
                "torch.profiler cannot start inside memprof.track(): memprof records with the "
                "PyTorch profiler, and two profiling sessions do not nest (the inner one would end "
                "the outer one). Run torch.profiler outside the tracked block."
            )
        start.__wrapped__ = orig  # type: ignore[attr-defined]
        return start

    def __enter__(self) -> SessionRecorder:
        if _ACTIVE:
            raise RuntimeError("memprof.track() is already recording in this process; it does not nest")
        if torch.autograd._profiler_enabled():
            raise RuntimeError(
                "memprof.track() cannot start inside torch.profiler: it records with the PyTorch "
                "profiler, and two profiling sessions do not nest. Start it outside the profiler."
            )
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"memprof.track() reads the cpu or cuda allocator, not {self.device}")
        _ACTIVE.append(self)
        try:
            import torch.nn.modules.module as module_hooks
            import torch.optim.optimizer as optim_hooks

            self._handles.append(module_hooks.register_module_forward_pre_hook(self._pre_forward))
            self._handles.append(module_hooks.register_module_forward_hook(
                self._post_forward, with_kwargs=True, always_call=True))
            self._handles.append(optim_hooks.register_optimizer_step_pre_hook(self._opt_pre))
            self._handles.append(optim_hooks.register_optimizer_step_post_hook(self._opt_post))
            self._patch(torch.autograd, "backward", self._wrap_backward(torch.autograd.backward))
            self._patch(torch.profiler.profile, "start", self._refuse_profiler(torch.profiler.profile.start))
            self._patch(torch.autograd.profiler.profile, "__enter__",
                        self._refuse_profiler(torch.autograd.profiler.profile.__enter__))
            activities = [torch.profiler.ProfilerActivity.CPU]
            self._prof = torch.profiler.profile(activities=activities, profile_memory=True)
            torch.profiler.profile.start.__wrapped__(self._prof)  # type: ignore[attr-defined]
            self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self._saved_hooks.__enter__()
            if self.mode is TrackMode.FINE:
                self._dispatch = _OwnershipMode(self._owned)
                self._dispatch.__enter__()
            self._new_step(time.time_ns())
            self._active = True
        except BaseException:
            self._teardown()
            raise
        return self

    def _patch(self, owner: Any, attr: str, value: Any) -> None:
        self._patched.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def _teardown(self) -> None:
        """Give every hook back and stop the profiler (each step on its own: all of them run)."""
        self._active = False
        errors: list[BaseException] = []
        if self._dispatch is not None:
            try:
                self._dispatch.__exit__(None, None, None)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(exc)
            self._dispatch = None
        if self._saved_hooks is not None:
            try:
                self._saved_hooks.__exit__(None, None, None)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            self._saved_hooks = None
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for owner, attr, orig in reversed(self._patched):
            setattr(owner, attr, orig)
        self._patched.clear()
        if self._prof is not None:
            try:
                self._prof.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if errors:
            raise errors[0]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        end = time.time_ns()
        no_step = False
        if self._pending_end is not None:
            self._close_step(self._pending_end)
        elif not self._steps:  # never an optimizer.step(): the whole block is one step
            no_step = True
            self._close_step(end)
        prof = self._prof
        self._teardown()
        self.log = SessionLog(
            mode=self.mode,
            device=self.device,
            steps=self._steps,
            memory=_memory_events(prof, self.device),
            saved=self._saved,
            owned=self._owned,
            module_types=dict(self._module_types),
            no_optimizer_step=no_step,
            stopped_early=exc_type is not None,
        )
        return False


def _walk(events: list[Any]) -> Iterator[Any]:
    stack = list(reversed(events))
    while stack:
        e = stack.pop()
        yield e
        stack.extend(reversed(e.children))


def _memory_events(prof: Any, device: torch.device) -> MemoryEvents:
    """The allocator events of ``device`` from the profiler's event tree, in time order."""
    alloc = torch._C._profiler._EventType.Allocation
    rows: list[tuple[int, int, int]] = []
    for e in _walk(prof.profiler.kineto_results.experimental_event_tree()):
        if e.tag != alloc:
            continue
        f = e.extra_fields
        dev = f.device
        if dev.type != device.type or (device.index is not None and dev.index != device.index):
            continue
        rows.append((e.start_time_ns, f.ptr, f.alloc_size))
    rows.sort(key=lambda r: r[0])  # stable: same-time events keep the allocator's order
    if not rows:
        z = np.zeros(0, np.int64)
        return MemoryEvents(z, z.copy(), z.copy())
    arr = np.array(rows, dtype=np.int64)
    return MemoryEvents(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy())
