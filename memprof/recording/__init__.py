"""Recording: hooks that watch one pass and fill records (rows, saved tensors, allocations).

:mod:`memprof.recording.layers` records one row per module call with the bytes autograd saves
for it (``torch.autograd.graph.saved_tensors_hooks``). Aggregation and rendering never import
hook code; they read the records.
"""

from __future__ import annotations

from .layers import COUNTED_KINDS, DEVICES, ForwardError, LayerRecord, Recording, make_input, record_layers

__all__ = ["COUNTED_KINDS", "DEVICES", "ForwardError", "LayerRecord", "Recording", "make_input", "record_layers"]
