"""memprof: where the memory of a PyTorch training step goes, and reversible networks that cut it."""

from __future__ import annotations

__version__ = "0.1.0"

from . import reversible  # noqa: E402
from .aggregation import LayerTable, layer_table  # noqa: E402
from .aggregation.compare import StrategyComparison, compare_strategies  # noqa: E402
from .aggregation.step import StepProfile, fit_batch_size, profile_step  # noqa: E402
from .aggregation.sweep import SweepResult, sweep  # noqa: E402
from .aggregation.tracked import TrackRecording, track  # noqa: E402
from .models import get_model, get_model_info, list_models  # noqa: E402
from .reversible import (  # noqa: E402
    AdditiveCoupling,
    ChannelZeroPad,
    Invertible1x1Conv,
    InvertibleDownsample,
    ReversibleSequence,
)
from .units import format_bytes, parse_bytes  # noqa: E402

__all__ = [
    "AdditiveCoupling",
    "ChannelZeroPad",
    "Invertible1x1Conv",
    "InvertibleDownsample",
    "LayerTable",
    "ReversibleSequence",
    "StrategyComparison",
    "TrackRecording",
    "StepProfile",
    "SweepResult",
    "__version__",
    "compare_strategies",
    "format_bytes",
    "fit_batch_size",
    "get_model",
    "get_model_info",
    "layer_table",
    "list_models",
    "parse_bytes",
    "profile_step",
    "reversible",
    "sweep",
    "track",
]
