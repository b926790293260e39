"""One training step's figures from its record: peaks, the breakdown at the peak, module peaks.

:func:`build_profile` reads a :class:`~memprof.recording.runner.StepRecord` (the trackers after
the step) and returns a :class:`StepProfileData`: plain numbers, no rendering. ``peak_bytes``
is allocator truth when measured; when estimated, the tensor-owned bytes plus the kernel scratch
of memprof.recording.workspace (or the CUDA caching-allocator model's figure for a CUDA estimate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..units import format_bytes
from ..vocabulary import (
    PHASES,
    STATE_CATEGORIES,
    TRACKED_CATEGORIES,
    Category,
    Mode,
    Phase,
    dtype_name,
)

if TYPE_CHECKING:
    import torch

    from ..recording.runner import StepRecord
    from ..recording.timeline import Timeline

__all__ = ["StepProfileData", "build_profile"]


@dataclass
class StepProfileData:
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
    mode: Mode
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
    #: the output the loss was taken of and the loss function (NOTE [ Which output the loss is taken of ])
    loss: dict[str, str] = field(default_factory=dict)

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
            "loss": dict(self.loss),
            "notes": list(self.notes),
        }


def _module_rows(record: StepRecord, total: np.ndarray, baseline: int) -> list[dict[str, Any]]:
    """Per module: calls, and the peak and increase of live bytes in its forward and backward."""
    tracker = record.tracker
    acc: dict[str, dict[str, Any]] = {}
    for name, typ in tracker.module_names.items():
        acc[name] = {"name": name, "type": typ, "calls": 0}
        for ph in (Phase.FORWARD.value, Phase.BACKWARD.value):
            acc[name][f"{ph}_peak_bytes"] = None
            acc[name][f"{ph}_increase_bytes"] = None
    for iv in tracker.intervals:
        row = acc.get(iv.name)
        if row is None:
            continue
        if iv.phase == Phase.FORWARD:
            row["calls"] += 1
        seg = total[iv.start : iv.end + 1]
        if len(seg) == 0:
            continue
        peak = int(seg.max())
        inc = peak - int(total[max(iv.start - 1, 0)])
        key_p, key_i = f"{iv.phase}_peak_bytes", f"{iv.phase}_increase_bytes"
        row[key_p] = peak if row[key_p] is None else max(row[key_p], peak)
        row[key_i] = inc if row[key_i] is None else max(row[key_i], inc)
    cuda_peaks = record.allocator.module_peak_increase if record.allocator is not None else {}
    if cuda_peaks:
        for name, row in acc.items():
            for ph in (Phase.FORWARD.value, Phase.BACKWARD.value):
                v = cuda_peaks.get((name, ph))
                row[f"{ph}_allocated_peak_bytes"] = None if v is None else baseline + v
    return list(acc.values())


@dataclass
class _Peak:
    """The step's peak as the allocator (or its model) saw it, with the phases' peaks."""

    peak: int
    index: int
    reserved: int | None = None
    allocator_timeline: tuple[np.ndarray, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


def _measured_peak(record: StepRecord, baseline: int, index: int, phase_rows: dict[str, Any]) -> _Peak:
    """Allocator truth: the measured increase above the bytes live when the step started."""
    res = record.allocator
    assert res is not None
    out = _Peak(baseline + res.peak_increase, index)
    if res.reserved_peak_increase is not None:
        out.reserved = baseline + res.reserved_peak_increase
    for ph in PHASES:
        if ph in res.phase_peak_increase:
            phase_rows[ph]["peak_bytes"] = baseline + res.phase_peak_increase[ph]
    if res.times_s is not None and res.live_increase is not None:
        out.allocator_timeline = (res.times_s, baseline + res.live_increase)
    if res.peak_op:
        out.notes.append(f"the allocator peak was reached inside {res.peak_op}")
    if record.traced_on is not None and record.traced_on.type == "cuda":
        out.notes.append("CUDA peaks are max_memory_allocated above the bytes live at the start, plus the resident state")
    return out


def _span_max(values: np.ndarray, spans: list[tuple[int, int]]) -> int:
    """The highest value over the spans of one phase (a phase repeats under gradient accumulation)."""
    return max(int(values[s : e + 1].max()) for s, e in spans)


def _modelled_cuda_peak(record: StepRecord, step_start: int, phases: dict[str, list[tuple[int, int]]],
                        phase_rows: dict[str, Any]) -> _Peak:
    """A CUDA estimate: the storage stream replayed through the caching-allocator model."""
    assert record.cuda_model is not None
    allocated, reserved = record.cuda_model
    index = int(step_start + np.argmax(allocated[step_start:]))
    out = _Peak(int(allocated[index]), index, int(reserved[step_start:].max()))
    for ph in PHASES:
        phase_rows[ph]["peak_bytes"] = _span_max(allocated, phases[ph])
    out.notes.append("CUDA caching-allocator model" + (" (expandable segments)" if record.expandable_segments else "")
                     + "; predictions not yet checked on a GPU; not modelled: " + "; ".join(record.cuda_not_modelled))
    if record.kernels is not None:
        out.notes += record.kernels.notes()
    return out


def _estimated_cpu_peak(record: StepRecord, total: np.ndarray, step_start: int, attributed_peak: int,
                        attributed_idx: int, phases: dict[str, list[tuple[int, int]]], phase_rows: dict[str, Any]) -> _Peak:
    """A CPU estimate: tensor-owned bytes, and inside each op with a rule its kernel's scratch.

    NOTE [ What an estimate adds to the fake step ] (memprof.recording.estimate): the peak is the
    larger of the tensor-owned peak and every op's "live before + its outputs + its scratch";
    the breakdown stays the one at the tensor-owned peak, the scratch shows as ``unattributed``
    (as a measurement's does).
    """
    out = _Peak(attributed_peak, attributed_idx)
    kernels = record.kernels
    for ph, row in phase_rows.items():
        row["peak_bytes"] = row["attributed_peak_bytes"]
    if kernels is None:
        out.notes.append("estimate of tensor-owned bytes; memory no tensor owns (kernel workspaces) is not included")
        return out
    inside, where = kernels.peak_inside_ops(total, step_start)
    if where is not None and inside > out.peak:
        out.peak = inside
        out.notes.append(f"the estimated peak falls inside {where.op.replace('.default', '')} (kernel scratch "
                         f"{format_bytes(where.scratch)}: memprof.recording.workspace)")
    for ph, row in phase_rows.items():
        inside_phase = max((kernels.peak_inside_ops(total, s, e)[0] for s, e in phases[ph]), default=0)
        row["peak_bytes"] = max(row["attributed_peak_bytes"] or 0, inside_phase)
    out.notes += kernels.notes()
    return out


def build_profile(
    record: StepRecord,
    *,
    name: str,
    batch_size: int,
    input_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    optimizer: str,
    mode: Mode,
) -> StepProfileData:
    """Turn a :class:`~memprof.recording.runner.StepRecord` into a :class:`StepProfileData`.

    Returns:
        Peaks, the breakdown at the peak (categories adding up to the peak), phase and module
        peaks, the holders at the activation peak, and notes on what the figures cannot see.
    """
    tracker = record.tracker
    timeline = tracker.timeline()
    total = timeline.total
    phases: dict[str, list[tuple[int, int]]] = {}
    for p, s, e in timeline.phases:  # forward and backward repeat under gradient accumulation
        phases.setdefault(p, []).append((s, e))
    step_start = phases[Phase.FORWARD.value][0][0]
    baseline = int(total[step_start])
    attributed_idx = int(step_start + np.argmax(total[step_start:]))
    attributed_peak = int(total[attributed_idx])
    act = timeline.activations
    activation_idx = int(step_start + np.argmax(act[step_start:]))
    non_state = [c for c in TRACKED_CATEGORIES if c not in STATE_CATEGORIES]
    holders = [{"category": c, "module": o, "bytes": b} for c, o, b in tracker.holders_at(activation_idx, non_state)[:10]]
    phase_rows: dict[str, dict[str, int | None]] = {
        ph: {"peak_bytes": None, "attributed_peak_bytes": _span_max(total, phases[ph])}
        for ph in PHASES
    }
    if record.allocator is not None:
        peak = _measured_peak(record, baseline, attributed_idx, phase_rows)
    elif record.cuda_model is not None:
        peak = _modelled_cuda_peak(record, step_start, phases, phase_rows)
    elif mode is Mode.ESTIMATED:
        peak = _estimated_cpu_peak(record, total, step_start, attributed_peak, attributed_idx, phases, phase_rows)
    else:
        peak = _Peak(attributed_peak, attributed_idx)
        for row in phase_rows.values():
            row["peak_bytes"] = row["attributed_peak_bytes"]
    at_peak = timeline.at(peak.index)
    at_peak[Category.UNATTRIBUTED.value] = peak.peak - sum(at_peak.values())
    return StepProfileData(
        model=name, batch_size=batch_size, device=str(device), dtype=dtype_name(dtype), optimizer=optimizer,
        mode=mode, peak_bytes=int(peak.peak), attributed_peak_bytes=attributed_peak,
        activation_peak_bytes=int(act[activation_idx]), at_peak=at_peak, phases=phase_rows,
        modules=_module_rows(record, total, baseline), step_time_s=record.step_time_s,
        reserved_peak_bytes=peak.reserved, input_shape=input_shape, activation_peak_holders=holders,
        notes=peak.notes + list(record.notes), timeline=timeline, allocator_timeline=peak.allocator_timeline,
        loss=dict(record.loss_choice),
    )
