"""Which tensor owns every live byte of a training step: storages tracked op by op.

:class:`StorageTracker` is a ``TorchDispatchMode`` that sees the output of every ATen op of a
step (forward, backward, the recomputation inside reversible backward, the optimizer), keeps a
weak reference to each new untyped storage and notes when it dies, when it is resized, when
autograd saves it for backward and when autograd lets it go. From that event stream it rebuilds,
after the step, the live bytes of each category at every event:

- ``parameters``: parameter and buffer storages of the model (present before the step);
- ``gradients``: storages that end up as a parameter's ``.grad``, from their allocation on;
- ``optimizer_state``: storages held in ``optimizer.state``;
- ``inputs``: the input batch and the targets;
- ``activations``: storages that autograd holds for backward (saved-tensor hooks), while it
  holds them;
- ``temporaries``: every other tensor-owned storage (op outputs in flight, incoming gradients,
  the recomputed halves of a reversible block before they are saved, optimizer scratch).

The same code runs under ``FakeTensorMode``: fake storages have sizes and die like real ones,
so an estimate sees the very bytes a measured run sees (tests check byte equality on the CPU).
Memory that no tensor owns (kernel workspaces, allocator slack) is invisible here; the
allocator-level trackers in :mod:`memprof.recording.allocations` measure it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd import _enable_record_function
from torch.utils._python_dispatch import TorchDispatchMode

from ..vocabulary import TRACKED_CATEGORIES, Category, Phase
from .boundaries import ModuleBoundaries
from .tensors import (
    arg_tensors,
    out_tensors,
    storage_key,
    storage_keys,
    storages,
    tensors_in,
    writes_in_place,
)
from .timeline import Timeline

__all__ = ["ModuleInterval", "StorageTracker"]


@dataclass
class ModuleInterval:
    """One stretch of a module's work on the event clock: ``[start, end]`` (inclusive)."""

    name: str
    phase: str  # "forward" or "backward" (recomputation in backward counts as backward)
    start: int
    end: int


@dataclass(slots=True)
class _Life:
    # slots: one object per storage life instead of two (instance and __dict__), less work
    # for the cyclic garbage collector during a step (thousands of lives per step)
    start: int
    end: int | None
    nbytes: int
    category: Category | None = None  # a fixed role (parameter, gradient, ...), else None
    owner: str = ""  # the module running when it was allocated ("<name> (backward)" in backward)


class _Saved:
    """What a saved-tensor pack hook returns: the tensor, and a note when autograd drops it.

    Holds a weak reference to its tracker and the storage key (no closure per saved tensor).
    """

    __slots__ = ("tensor", "_tracker", "_key", "__weakref__")

    def __init__(self, tensor: torch.Tensor, tracker: weakref.ref[StorageTracker], key: int) -> None:
        self.tensor = tensor
        self._tracker: weakref.ref[StorageTracker] | None = tracker
        self._key = key

    def __del__(self) -> None:
        tracker_ref, self._tracker = self._tracker, None
        if tracker_ref is not None:
            me = tracker_ref()
            if me is not None and me._active:
                me._unsave(self._key)


class StorageTracker(TorchDispatchMode):
    """Track every storage of a training step and the role it plays, event by event.

    Use through :meth:`track` (which also installs saved-tensor hooks, gradient hooks, the
    storage-resize watch and the module boundaries of :class:`~memprof.recording.boundaries.ModuleBoundaries`,
    and removes all of them on exit, also on error)::

        tracker = StorageTracker(model, optimizer, [x, y])
        with tracker.track():
            run_step(model, optimizer, x, y, tracker)
        timeline = tracker.timeline()   # live bytes per category after every event

    Known limitations: memory that no tensor owns (kernel workspaces, allocator rounding) is
    invisible here; a storage created outside the dispatcher (a C++ extension that allocates
    without an ATen op) is seen only when an op returns it; tensors without a plain storage
    (sparse, nested) are not tracked.

    Args:
        model: the model whose parameters, buffers and modules are tracked.
        optimizer: its optimizer (state storages are ``optimizer_state``), or None.
        inputs: tensors of the input batch (inputs and targets).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, inputs: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.inputs = list(inputs)
        self.clock = 0
        self.live = 0
        self.peak = 0
        self.lives: dict[int, list[_Life]] = {}
        self.saved: dict[int, list[list[int | None]]] = {}  # key -> [[start, end], ...]
        self._saved_count: dict[int, int] = {}
        self._refs: dict[int, weakref.KeyedRef] = {}
        self._first_life: dict[int, int] = {}  # key -> index of the current storage's first life
        self.phase = "setup"
        self.phases: list[tuple[str, int, int]] = []
        self._phase_start = 0
        self.intervals: list[ModuleInterval] = []
        self._bw_open: dict[str, list[int]] = {}
        self._stack: list[str] = []
        self._ops: dict[Any, tuple[bool, bool]] = {}  # func -> (writes in place, mute inner record)
        self._mute_inner = False  # see NOTE [ One profiler record per op ]
        self._bw_current: str | None = None
        self.boundaries = ModuleBoundaries(model, in_backward=lambda: self.phase == Phase.BACKWARD.value)
        self.boundaries.register_user_hooks(
            self._forward_started, self._forward_ended, self._backward_started, self._backward_ended)
        self._active = False
        #: optional object with ``open(tag)``/``close(tag)`` told of every module interval
        #: (the CUDA allocator tracker reads its peaks there).
        self.listener: Any = None
        # One weak reference to the tracker and one storage-death callback for all storages and
        # saved tensors (a weak reference: a dead storage must not keep the tracker alive).
        self._self_ref: weakref.ref[StorageTracker] = weakref.ref(self)
        tracker = self._self_ref

        def died(ref: weakref.KeyedRef) -> None:
            me = tracker()
            if me is not None:
                me._on_storage_death(ref.key)

        self._died = died

    # ---- storage events -------------------------------------------------------------------
    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def _owner(self) -> str:
        if self._stack:
            name = self._stack[-1]
            return f"{name} (recomputed in backward)" if self.phase == "backward" else name
        if self.phase == "backward" and self._bw_current is not None:
            return f"{self._bw_current} (backward)"
        return f"({self.phase})"

    def _alloc(self, key: int, nbytes: int) -> None:
        self.clock = t = self.clock + 1
        life = _Life(t, None, nbytes, None, self._owner())
        lives = self.lives.get(key)
        if lives is None:
            self.lives[key] = [life]
        else:
            lives.append(life)
        self.live = live = self.live + nbytes
        if live > self.peak:
            self.peak = live

    def _free(self, key: int) -> None:
        lives = self.lives.get(key)
        if not lives or lives[-1].end is not None:
            return
        t = self._tick()
        lives[-1].end = t
        self.live -= lives[-1].nbytes
        if self._saved_count.get(key):
            self.saved[key][-1][1] = t
            self._saved_count[key] = 0

    def _on_storage_death(self, key: int) -> None:
        if self._active:
            self._free(key)
        self._refs.pop(key, None)

    def _watch(self, st: torch.UntypedStorage, key: int) -> None:
        self._refs[key] = weakref.KeyedRef(st, self._died, key)
        lives = self.lives.get(key)
        self._first_life[key] = len(lives) if lives is not None else 0

    def _set_category(self, key: int, category: Category) -> None:
        """Give every life of the storage now behind ``key`` a fixed role."""
        for life in self.lives.get(key, [])[self._first_life.get(key, 0):]:
            life.category = category

    def _known(self, key: int) -> bool:
        # NOTE [ Storage identity ]
        # A storage is keyed by its StorageImpl address, which the allocator reuses once the
        # storage is dead. A key therefore names a tracked storage only while our weak reference
        # to its Python object is alive (PyTorch keeps that object alive as long as the
        # StorageImpl lives); a dead key that comes back is a new storage.
        ref = self._refs.get(key)
        return ref is not None and ref() is not None

    def _add_storage(self, st: torch.UntypedStorage, category: Category | None = None) -> int:
        key = st._cdata
        if not self._known(key):
            self._watch(st, key)
            self._alloc(key, int(st.nbytes()))
        if category is not None:
            self._set_category(key, category)
        return key

    def _check_size(self, st: torch.UntypedStorage) -> None:
        """Follow a resize of a tracked storage: the old block is freed, a new one allocated."""
        key = st._cdata
        if not self._known(key):
            return
        lives = self.lives[key]
        nbytes = int(st.nbytes())
        if lives[-1].end is None:
            if nbytes == lives[-1].nbytes:
                return
            self._free(key)
        if nbytes:
            self._alloc(key, nbytes)

    # ---- saved tensors -----------------------------------------------------------------------
    def _pack(self, t: torch.Tensor) -> Any:
        if not self._active:
            return t
        key = storage_key(t)
        ref = self._refs.get(key) if key is not None else None
        if ref is None or ref() is None:
            return t
        count = self._saved_count.get(key, 0)
        if count == 0:
            self.clock += 1
            saved = self.saved.get(key)
            if saved is None:
                self.saved[key] = [[self.clock, None]]
            else:
                saved.append([self.clock, None])
        self._saved_count[key] = count + 1
        return _Saved(t, self._self_ref, key)

    def _unsave(self, key: int) -> None:
        count = self._saved_count.get(key, 0)
        if count <= 0:
            return
        self._saved_count[key] = count - 1
        if count == 1:
            self.saved[key][-1][1] = self._tick()

    @staticmethod
    def _unpack(obj: Any) -> torch.Tensor:
        return obj.tensor if isinstance(obj, _Saved) else obj

    # ---- dispatch ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        op = self._ops.get(func)
        if op is None:
            op = self._ops[func] = (writes_in_place(func), self._mute_inner and getattr(func, "namespace", None) == "aten")
        writes, mute = op
        if mute:
            _enable_record_function(False)
            try:
                out = func(*args, **kwargs) if kwargs else func(*args)
            finally:
                _enable_record_function(True)
        else:
            out = func(*args, **kwargs) if kwargs else func(*args)
        if not self._active:
            return out
        if writes:  # resize_, set_, out= variants may have resized a tracked storage
            self._after_write(out, args, kwargs)
            return out
        # NOTE [ Dispatch fast path ]
        # Most ops write nothing in place and return one tensor: look its storage up directly
        # (no list of the outputs), and only build the inputs' storage keys when the output's
        # storage is untracked. Same events as _after_write(), fewer Python calls per op.
        refs = self._refs
        in_keys: set[int] | None = None
        for st, key in storages(out_tensors(out)):
            ref = refs.get(key)
            if ref is not None and ref() is not None:
                continue
            if in_keys is None:  # an output on an untracked storage: new, unless it aliases an input
                in_keys = storage_keys(args, kwargs)
            if key not in in_keys:
                self._watch(st, key)
                self._alloc(key, int(st.nbytes()))
        return out

    def _after_write(self, out: Any, args: Any, kwargs: Any) -> None:
        """The events of an op that writes an argument in place (it may have resized it)."""
        refs = self._refs
        in_keys: set[int] = set()
        checked: set[int] = set()
        for st, key in storages(arg_tensors(args, kwargs)):
            in_keys.add(key)
            ref = refs.get(key)
            if ref is not None and ref() is not None and key not in checked:
                checked.add(key)
                self._check_size(st)
        # an in-place op returns its argument: checked above already (a check is idempotent)
        for st, key in storages(out_tensors(out)):
            if key in checked:
                continue
            if self._known(key):
                self._check_size(st)
            elif key not in in_keys:  # new, unless it aliases an input
                self._add_storage(st)

    # ---- phases and modules --------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        """Start a phase ("forward", "backward", "optimizer") at the current event."""
        if self.phase == "backward":
            # Modules whose inputs need no gradient (the first layer) have no end-of-backward
            # hook: their backward ends with the phase.
            for name, starts in self._bw_open.items():
                while starts:
                    self.intervals.append(ModuleInterval(name, "backward", starts.pop(), self.clock))
                    if self.listener is not None:
                        self.listener.close((name, "backward"))
        if self.phase != "setup":
            self.phases.append((self.phase, self._phase_start, self.clock))
        self.phase = phase
        self._phase_start = self.clock

    def _forward_started(self, name: str, phase: str) -> int:
        start = self._tick()
        self._stack.append(name)
        if self.listener is not None:
            self.listener.open((name, phase))
        return start

    def _forward_ended(self, name: str, phase: str, start: int) -> None:
        if self._stack:
            self._stack.pop()
        self.intervals.append(ModuleInterval(name, phase, start, self._tick()))
        if self.listener is not None:
            self.listener.close((name, phase))

    def _backward_started(self, name: str) -> None:
        if self._active:
            self._bw_open.setdefault(name, []).append(self._tick())
            self._bw_current = name
            if self.listener is not None:
                self.listener.open((name, Phase.BACKWARD.value))

    def _backward_ended(self, name: str) -> None:
        starts = self._bw_open.get(name)
        if self._active and starts:
            self.intervals.append(ModuleInterval(name, Phase.BACKWARD.value, starts.pop(), self._tick()))
            if self.listener is not None:
                self.listener.close((name, Phase.BACKWARD.value))

    def _grad_accumulated(self, param: torch.Tensor) -> None:
        if self._active and param.grad is not None:
            key = storage_key(param.grad)
            if key is not None:
                self._add_storage(param.grad.untyped_storage())
                self._set_category(key, Category.GRADIENTS)

    @contextlib.contextmanager
    def track(self) -> Iterator[StorageTracker]:
        """Install every hook, run the body under the tracker, remove every hook (also on error)."""
        handles: list[Any] = []
        orig_resize = torch.UntypedStorage.resize_
        tracker = self

        def resize_(st: torch.UntypedStorage, size: int) -> Any:
            result = orig_resize(st, size)
            if tracker._active:
                tracker._check_size(st)
            return result

        stack = contextlib.ExitStack()
        try:
            for p in self.model.parameters():
                self._add_storage(p.untyped_storage(), Category.PARAMETERS)
                if p.requires_grad:
                    handles.append(p.register_post_accumulate_grad_hook(self._grad_accumulated))
            for b in self.model.buffers():
                self._add_storage(b.untyped_storage(), Category.PARAMETERS)
            for t in self._optimizer_tensors():
                self._add_storage(t.untyped_storage(), Category.OPTIMIZER_STATE)
            for t in self.inputs:
                self._add_storage(t.untyped_storage(), Category.INPUTS)
            stack.enter_context(self.boundaries.track())
            torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
            # NOTE [ One profiler record per op ]
            # Under this mode every ATen op enters the dispatcher twice: once from the caller
            # (the profiler records it, and the mode gets it), once from __torch_dispatch__ below
            # the mode (recorded again, with everything the kernel calls). While a profiler runs,
            # the inner call runs with RecordFunction off: the profiler keeps the outer record
            # of every op (the outermost op at the allocator peak is unchanged), and the
            # allocator's memory events, which do not go through RecordFunction, are all still
            # reported. Only ATen ops: others may open profiler ranges of their own
            # (record_function is an op). Measured: about -11 us per op (irevvgg, 1 thread).
            self._mute_inner = torch.autograd._profiler_enabled()
            self._ops.clear()
            self._active = True
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack), self:
                yield self
            self.set_phase("end")
            for t in self._optimizer_tensors():  # state created during this step
                key = storage_key(t)
                if key is not None and self._known(key):
                    self._set_category(key, Category.OPTIMIZER_STATE)
        finally:
            self._active = False
            torch.UntypedStorage.resize_ = orig_resize  # type: ignore[method-assign]
            for h in handles:
                h.remove()
            stack.close()
            self._refs.clear()

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        if self.optimizer is None:
            return []
        return [t for state in self.optimizer.state.values() for t in tensors_in(state)]

    @property
    def module_names(self) -> dict[str, str]:
        """Qualified module name -> class name, for every module of the model."""
        return self.boundaries.module_names

    # ---- results -------------------------------------------------------------------------------
    def holders_at(self, index: int, categories: Iterable[Category] | None = None) -> list[tuple[str, str, int]]:
        """``(category, owner module, bytes)`` of the storages live after event ``index``, largest first.

        Args:
            index: an event of the clock.
            categories: keep only these (default: all tracked ones).
        """
        wanted = {c.value for c in (categories or TRACKED_CATEGORIES)}
        acc: dict[tuple[str, str], int] = {}
        for key, lives in self.lives.items():
            for life in lives:
                end = life.end if life.end is not None else self.clock + 1
                if not life.start <= index < end:
                    continue
                if life.category is not None:
                    cat = life.category.value
                else:
                    saved = any(
                        s <= index < (e if e is not None else self.clock + 1) for s, e in self.saved.get(key, [])
                    )
                    cat = Category.ACTIVATIONS.value if saved else Category.TEMPORARIES.value
                if cat in wanted:
                    acc[(cat, life.owner)] = acc.get((cat, life.owner), 0) + life.nbytes
        return sorted(((c, o, b) for (c, o), b in acc.items()), key=lambda r: (-r[2], r[0], r[1]))  # ties by name: stable reports

    def timeline(self) -> Timeline:
        """Live bytes per category after every event (call after :meth:`track` has exited)."""
        n = self.clock + 2
        diffs = {c.value: np.zeros(n, dtype=np.int64) for c in TRACKED_CATEGORIES}
        end_default = self.clock + 1

        def add(cat: Category, start: int, end: int | None, nbytes: int) -> None:
            d = diffs[cat.value]
            d[start] += nbytes
            d[end if end is not None else end_default] -= nbytes

        for key, lives in self.lives.items():
            for life in lives:
                if life.category is not None:
                    add(life.category, life.start, life.end, life.nbytes)
                    continue
                add(Category.TEMPORARIES, life.start, life.end, life.nbytes)
                life_end = life.end if life.end is not None else end_default
                for s, e in self.saved.get(key, []):
                    s2, e2 = max(s, life.start), min(e if e is not None else end_default, life_end)  # type: ignore[type-var]
                    if s2 < e2:
                        add(Category.TEMPORARIES, s2, e2, -life.nbytes)
                        add(Category.ACTIVATIONS, s2, e2, life.nbytes)
        by_cat = {k: np.cumsum(v)[: self.clock + 1] for k, v in diffs.items()}
        return Timeline(by_cat, list(self.phases))
