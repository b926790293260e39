"""Recording: running things and watching them. Hooks fill records; nobody else installs hooks.

- :mod:`~memprof.recording.layers`: one forward, one :class:`LayerRecord` per table row with the
  bytes autograd saves for it (``saved_tensors_hooks``);
- :mod:`~memprof.recording.runner`: the training step (``run_step``), the step recorded under
  the trackers, real or fake (``record_step``), and the interleaved timing loop (``time_steps``);
- :mod:`~memprof.recording.user_step`: what a user's step is made of (inputs of any kind and
  dtype, input specs, loss, optimizer by name or callable, autocast, accumulation);
- :mod:`~memprof.recording.session`: :class:`SessionRecorder`, the user's own loop recorded with
  PyTorch's global module and optimizer hooks and the allocator's events (``memprof.track()``);
- :mod:`~memprof.recording.attribution`: :class:`StorageTracker`, who owns every live byte;
- :mod:`~memprof.recording.boundaries`: :class:`ModuleBoundaries`, where each module's forward
  and backward start and end;
- :mod:`~memprof.recording.timeline`: the tracker's output as plain data (live bytes per
  category after every event) and the activation peak;
- :mod:`~memprof.recording.tensors`: the tensors in op arguments and the storages behind them;
- :mod:`~memprof.recording.allocations`: the allocators' own view (CPU replay, CUDA peaks);
- :mod:`~memprof.recording.estimate`: fake models and the CUDA caching-allocator model.

Aggregation and rendering never import hook code; they read the records returned here.
"""

from __future__ import annotations

from .layers import COUNTED_KINDS, ForwardError, LayerRecord, Recording, make_input, record_layers

__all__ = ["COUNTED_KINDS", "ForwardError", "LayerRecord", "Recording", "make_input", "record_layers"]
