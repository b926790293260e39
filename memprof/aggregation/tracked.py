"""The steps of the user's own training loop, from a :class:`~memprof.recording.session.SessionLog`.

:func:`build_step_profiles` cuts the allocator events that
:class:`~memprof.recording.session.SessionRecorder` recorded into training steps and returns one
:class:`~memprof.aggregation.step.StepProfileData` per step, the same figures ``profile_step``
has. How each figure is made (all from the allocator's own events, exact on the CPU):

- ``peak_bytes``: the highest live bytes during the step. Live bytes are the running sum of
  the allocator's events since the block started, plus the storages of the models and
  optimizers seen that were allocated before the block (their allocation was not observed).
- ``at_peak``: every block alive at the peak, by role. A block is ``parameters``,
  ``gradients`` or ``optimizer_state`` when a model or optimizer seen holds it at the end of the
  step (by address, while the block is alive); ``inputs`` when it was passed to a model;
  ``activations`` while autograd holds it for backward; else ``temporaries``. In the fast mode,
  temporaries include kernel workspaces; the fine mode reports blocks no tensor owns as
  ``unattributed``.
- ``activation_peak_bytes``: the peak of live bytes other than parameters, gradients and
  optimizer state (NOTE [ The activation peak, defined once ]).
- per-module forward/backward peaks, phases, and the timeline, on the allocator's event clock.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..vocabulary import STATE_CATEGORIES, TRACKED_CATEGORIES, Category, Mode, TrackMode
from .step import StepProfileData

if TYPE_CHECKING:
    from ..recording.session import SessionLog, StepMarks

__all__ = ["TrackedStep", "build_step_profiles"]


@dataclass
class TrackedStep:
    """One recorded step's figures, and its timeline as plain arrays.

    Attributes:
        data: the step's :class:`StepProfileData` (``timeline`` left None: the caller makes
            the :class:`~memprof.recording.timeline.Timeline` from the two fields below).
        by_category: live bytes per tracked category after each allocator event of the step
            (index 0: before its first event).
        phases: ``(phase, start, end)`` on that clock.
    """

    data: StepProfileData
    by_category: dict[str, np.ndarray]
    phases: list[tuple[str, int, int]]


@dataclass
class _Life:
    ptr: int
    start: int  # event index of the allocation
    end: int  # event index of the free (len(events) if never freed)
    t0: int  # ns
    t1: int  # ns (a large number if never freed)
    nbytes: int
    category: str | None = None
    owned: bool = False
    saved: list[tuple[int, int]] = field(default_factory=list)  # event index ranges


def _lives(log: SessionLog) -> tuple[list[_Life], dict[int, list[_Life]]]:
    """Every block the allocator handed out during the block, with its start and end."""
    mem = log.memory
    n = len(mem.times)
    never = np.iinfo(np.int64).max
    lives: list[_Life] = []
    open_: dict[int, _Life] = {}
    for i in range(n):
        ptr, d = int(mem.ptrs[i]), int(mem.deltas[i])
        if d > 0:
            life = _Life(ptr, i, n, int(mem.times[i]), int(never), d)
            open_[ptr] = life
            lives.append(life)
        elif d < 0:
            life = open_.pop(ptr, None)
            if life is not None:
                life.end, life.t1 = i, int(mem.times[i])
            else:
                # NOTE [ Blocks older than the block ]
                # The CPU allocator reports the free of a block it saw allocated in an earlier
                # profiling session (its size table outlives the session): alive since before
                # the block, until here.
                lives.append(_Life(ptr, -1, i, -1, int(mem.times[i]), -d))
    by_ptr: dict[int, list[_Life]] = {}
    for life in lives:
        by_ptr.setdefault(life.ptr, []).append(life)
    return lives, by_ptr


def _life_at(by_ptr: dict[int, list[_Life]], ptr: int, t: int) -> _Life | None:
    """The block at ``ptr`` alive at time ``t`` (ns), if the allocator reported it."""
    cands = by_ptr.get(ptr)
    if not cands:
        return None
    i = bisect.bisect_right([c.t0 for c in cands], t) - 1
    if i >= 0 and cands[i].t1 > t:
        return cands[i]
    return None


def _classify(log: SessionLog, lives: list[_Life], by_ptr: dict[int, list[_Life]]) -> dict[int, dict[str, int]]:
    """Give each block its role; returns, per step, the bytes of state allocated before the block."""
    times = log.memory.times
    pre: dict[int, dict[str, int]] = {}
    seen_pre: dict[int, tuple[str, int]] = {}
    for k, marks in enumerate(log.steps):
        for cat, ptrs in marks.state.items():
            for ptr, nbytes in ptrs.items():
                life = _life_at(by_ptr, ptr, marks.end)
                if life is not None:
                    if life.category is None or cat == Category.PARAMETERS.value:
                        life.category = cat
                else:  # allocated before the block: resident all along
                    seen_pre[ptr] = (cat, nbytes)
        acc: dict[str, int] = {}
        for cat, nbytes in seen_pre.values():
            acc[cat] = acc.get(cat, 0) + nbytes
        pre[k] = acc
        for ptr, nbytes in marks.inputs:
            life = _life_at(by_ptr, ptr, marks.end if marks.end > marks.start else marks.start)
            if life is None:
                life = _life_at(by_ptr, ptr, marks.start)
            if life is not None and life.category is None:
                life.category = Category.INPUTS.value
    for ptr, t0, t1 in log.saved:
        life = _life_at(by_ptr, ptr, t0)
        if life is None or life.category is not None:
            continue
        s = int(np.searchsorted(times, t0, "right"))
        e = int(np.searchsorted(times, t1, "right")) if t1 is not None else life.end
        life.saved.append((s, min(e, life.end)))
    if log.mode is TrackMode.FINE:
        for t, ptr in log.owned:
            life = _life_at(by_ptr, ptr, t)
            if life is not None:
                life.owned = True
    return pre


def _timeline(lives: list[_Life], i0: int, i1: int, fine: bool) -> dict[str, np.ndarray]:
    """Live bytes per category after each event ``i0-1 .. i1`` (index 0 = before the step)."""
    n = i1 - i0 + 2
    diffs = {c.value: np.zeros(n + 1, dtype=np.int64) for c in TRACKED_CATEGORIES}
    diffs["unattributed"] = np.zeros(n + 1, dtype=np.int64)

    def add(cat: str, s: int, e: int, nbytes: int) -> None:
        # event index j maps to local index j - i0 + 1; a block alive before the step starts at 0
        a = max(s - i0 + 1, 0)
        b = min(e - i0 + 1, n)
        if a < b:
            diffs[cat][a] += nbytes
            diffs[cat][b] -= nbytes

    for life in lives:
        if life.end < i0 or life.start > i1:
            continue
        if life.category is not None:
            add(life.category, life.start, life.end, life.nbytes)
            continue
        base = Category.TEMPORARIES.value if (life.owned or not fine) else "unattributed"
        add(base, life.start, life.end, life.nbytes)
        for s, e in _merge(life.saved):
            add(base, s, e, -life.nbytes)
            add(Category.ACTIVATIONS.value, s, e, life.nbytes)
    return {k: np.cumsum(v)[:n] for k, v in diffs.items()}


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _owner(marks: StepMarks, t: int) -> str:
    """The innermost module interval running at ``t`` (shortest covering interval)."""
    best: tuple[int, str] | None = None
    for name, phase, s, e in marks.intervals:
        if s <= t <= e and (best is None or e - s < best[0]):
            best = (e - s, f"{name} (backward)" if phase == "backward" else name)
    return best[1] if best else "(outside modules)"


def build_step_profiles(log: SessionLog) -> list[TrackedStep]:
    """One :class:`TrackedStep` per recorded step (see the module docstring for each figure)."""
    lives, by_ptr = _lives(log)
    pre = _classify(log, lives, by_ptr)
    times = log.memory.times
    older = sum(life.nbytes for life in lives if life.start < 0)
    live_all = log.memory.live + older
    fine = log.mode is TrackMode.FINE
    profiles = []
    for k, marks in enumerate(log.steps):
        i0 = int(np.searchsorted(times, marks.start, "right"))
        i1 = int(np.searchsorted(times, marks.end, "right")) - 1
        i1 = max(i1, i0 - 1)
        cats = _timeline(lives, i0, i1, fine)
        resident = pre.get(k, {})
        for cat, nbytes in resident.items():
            cats[cat] = cats[cat] + nbytes
        tracked = {c.value: cats[c.value] for c in TRACKED_CATEGORIES}
        before = int(live_all[i0 - 1]) if i0 > 0 else older
        live = np.concatenate([[before], live_all[i0 : i1 + 1]]) + sum(resident.values())
        peak_idx = int(np.argmax(live))
        peak = int(live[peak_idx])
        at_peak = {c: int(v[peak_idx]) for c, v in tracked.items()}
        at_peak[Category.UNATTRIBUTED.value] = peak - sum(at_peak.values())
        total_tracked = sum(tracked.values())
        state = sum(tracked[c.value] for c in STATE_CATEGORIES)
        act = live - state
        act_idx = int(np.argmax(act))
        holders = _holders(lives, marks, i0, act_idx, fine)

        def local(t: int) -> int:
            return int(np.searchsorted(times, t, "right")) - i0

        phase_rows: dict[str, dict[str, int | None]] = {}
        phase_list = []
        for ph, s, e in marks.phases:
            a, b = max(local(s), 0), min(local(e), len(live) - 1)
            phase_list.append((ph, a, b))
            if ph == "other":
                continue
            seg_peak = int(live[a : b + 1].max()) if b >= a else int(live[max(a, 0)])
            seg_att = int(total_tracked[a : b + 1].max()) if b >= a else seg_peak
            row = phase_rows.setdefault(ph, {"peak_bytes": seg_peak, "attributed_peak_bytes": seg_att})
            row["peak_bytes"] = max(int(row["peak_bytes"] or 0), seg_peak)
            row["attributed_peak_bytes"] = max(int(row["attributed_peak_bytes"] or 0), seg_att)
        modules = _module_rows(log, marks, live, local)
        notes = []
        if fine:
            notes.append("unattributed: allocator blocks no tensor owns (kernel workspaces), seen op by op")
        else:
            notes.append("fast mode: temporaries include kernel workspaces")
        if not marks.state.get("parameters") and not marks.models:
            notes.append("no nn.Module ran in this step: no module rows, no parameters seen")
        shape = marks.input_shape
        profiles.append(TrackedStep(StepProfileData(
            model=" + ".join(marks.models) or "(no model seen)",
            batch_size=int(shape[0]) if shape else 0,
            device=marks.device if shape else str(log.device),
            dtype=marks.dtype or "",
            optimizer=" + ".join(marks.optimizers) or "(none)",
            mode=Mode.MEASURED,
            peak_bytes=peak,
            attributed_peak_bytes=int(total_tracked.max()),
            activation_peak_bytes=int(act[act_idx]),
            at_peak=at_peak,
            phases=phase_rows,
            modules=modules,
            step_time_s=(marks.end - marks.start) / 1e9,
            input_shape=tuple(shape[1:]),
            activation_peak_holders=holders,
            notes=notes,
            allocator_timeline=((times[i0 : i1 + 1] - marks.start) / 1e9, live[1:]),
        ), tracked, phase_list))
    return profiles


def _holders(lives: list[_Life], marks: StepMarks, i0: int, idx: int, fine: bool) -> list[dict[str, Any]]:
    """The largest non-state holders alive at local event ``idx``: {category, module, bytes}."""
    j = idx + i0 - 1  # global event index
    acc: dict[tuple[str, str], int] = {}
    state = {c.value for c in STATE_CATEGORIES}
    for life in lives:
        if not life.start <= j < life.end or life.category in state:
            continue
        if life.category is not None:
            cat = life.category
        elif any(s <= j < e for s, e in life.saved):
            cat = Category.ACTIVATIONS.value
        else:
            cat = Category.TEMPORARIES.value if (life.owned or not fine) else Category.UNATTRIBUTED.value
        key = (cat, _owner(marks, life.t0))
        acc[key] = acc.get(key, 0) + life.nbytes
    rows = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))[:10]  # ties by (category, module): stable reports
    return [{"category": c, "module": m, "bytes": b} for (c, m), b in rows]


def _module_rows(log: SessionLog, marks: StepMarks, live: np.ndarray, local: Any) -> list[dict[str, Any]]:
    acc: dict[str, dict[str, Any]] = {}
    for name, phase, s, e in marks.intervals:
        row = acc.get(name)
        if row is None:
            row = acc[name] = {"name": name, "type": log.module_types.get(name, ""), "calls": 0}
            for ph in ("forward", "backward"):
                row[f"{ph}_peak_bytes"] = None
                row[f"{ph}_increase_bytes"] = None
        if phase == "forward":
            row["calls"] += 1
        a, b = max(local(s), 0), min(local(e), len(live) - 1)
        if b < a:
            b = a
        peak = int(live[a : b + 1].max())
        inc = peak - int(live[a])
        kp, ki = f"{phase}_peak_bytes", f"{phase}_increase_bytes"
        row[kp] = peak if row[kp] is None else max(row[kp], peak)
        row[ki] = inc if row[ki] is None else max(row[ki], inc)
    order = {n: i for i, n in enumerate(log.module_types)}
    return sorted(acc.values(), key=lambda r: order.get(r["name"], len(order)))
