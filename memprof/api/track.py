"""``memprof.track()``: record every training step of the code in a ``with`` block.

:func:`track` checks its arguments, runs the block under
:class:`~memprof.recording.session.SessionRecorder`, and on exit (also when the code raised)
aggregates the log (:func:`memprof.aggregation.tracked.build_step_profiles`) into the
renderable :class:`~memprof.rendering.tracked.TrackRecording`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..aggregation.tracked import build_step_profiles
from ..recording.session import SessionLog, SessionRecorder
from ..recording.timeline import Timeline
from ..rendering.step import StepProfile
from ..rendering.tracked import TrackRecording
from ..validation import UsageError, check_choice, check_device
from ..vocabulary import TrackMode

__all__ = ["track"]

_MODES = tuple(m.value for m in TrackMode)


@contextlib.contextmanager
def track(mode: str = "fast", device: str | torch.device = "cpu", max_steps: int | None = None) -> Iterator[TrackRecording]:
    """Record every training step of the code in the block, without changing it.

    A step ends at each ``optimizer.step()`` (several optimizers stepping one after the other
    end one step together); ``rec.steps`` is filled when the block exits, also when the code
    raised (then with the steps completed). Hooks, the saved-tensor hooks, the dispatch mode
    and the profiler are removed on exit in every case.

    Example::

        with memprof.track() as rec:
            for x, y in loader:
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
        print(rec.steady_state.to_text())

    Args:
        mode: ``"fast"`` (default: allocator events and module, step and saved-tensor hooks;
            about 1 us per op) or ``"fine"`` (adds a per-op dispatch mode that sees which
            blocks a tensor owns, so that kernel workspaces are reported as ``unattributed``
            instead of counted with temporaries; several times slower on small models). Peak
            bytes are the same in both.
        device: the allocator read: ``cpu`` (default) or ``cuda[:N]``.
        max_steps: end the block (raising :class:`memprof.recording.session.StopRecording`,
            which the block lets through) once this many steps have ended.

    Returns:
        A context manager giving the :class:`TrackRecording`.

    Raises:
        UsageError: for an unknown mode or device.
        RuntimeError: when already recording, or started inside ``torch.profiler``.
    """
    check_choice("track mode", mode, _MODES)
    dev = check_device(device, needs_cuda_here=True)
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0):
        raise UsageError(f"max_steps must be a positive integer, got {max_steps!r}")
    recorder = SessionRecorder(TrackMode(mode), dev, max_steps)
    rec = TrackRecording(mode=mode)
    try:
        with recorder:
            yield rec
    finally:
        if recorder.log is not None:
            _fill(rec, recorder.log)


def _fill(rec: TrackRecording, log: SessionLog) -> None:
    rec.no_optimizer_step = log.no_optimizer_step
    rec.stopped_early = log.stopped_early
    rec.steps = []
    for step in build_step_profiles(log):
        profile = StepProfile.from_data(step.data)
        profile.timeline = Timeline(step.by_category, step.phases)
        rec.steps.append(profile)
    if log.no_optimizer_step:
        rec.notes.append("the code never called optimizer.step(): the whole block is reported as one step")
    if log.mode is TrackMode.FAST:
        rec.notes.append("fast mode: temporaries include kernel workspaces (track(mode='fine') tells them apart)")


