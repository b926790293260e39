"""memprof: where the memory of a PyTorch training step goes, and reversible networks that cut it."""

from __future__ import annotations

from . import reversible
from .api.compare import compare_strategies
from .api.step import fit_batch_size, profile_step
from .api.sweep import sweep
from .api.table import layer_table
from .models import get_model, get_model_info, list_models
from .rendering.compare import StrategyComparison
from .rendering.layer_table import LayerTable
from .rendering.step import StepProfile
from .rendering.sweep import SweepResult
from .reversible import (
    AdditiveCoupling,
    ChannelZeroPad,
    Invertible1x1Conv,
    InvertibleDownsample,
    ReversibleSequence,
)
from .units import format_bytes, parse_bytes
from .version import __version__

__all__ = [
    "AdditiveCoupling",
    "ChannelZeroPad",
    "Invertible1x1Conv",
    "InvertibleDownsample",
    "LayerTable",
    "ReversibleSequence",
    "StrategyComparison",
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
]
