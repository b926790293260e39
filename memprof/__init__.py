"""memprof: where the memory of a PyTorch training step goes, and reversible networks that cut it.

The public names below are imported on first use (PEP 562 ``__getattr__``), so that
``import memprof`` and ``memprof --help`` do not pay for torch (NOTE [ Starting without torch ]
in :mod:`memprof.vocabulary`); ``memprof.profile_step`` imports what it needs when first touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

#: public name -> the module that defines it
_PUBLIC: dict[str, str] = {
    "reversible": "memprof.reversible",
    "compare_strategies": "memprof.api.compare",
    "fit_batch": "memprof.api.step",
    "fit_batch_size": "memprof.api.step",
    "profile_step": "memprof.api.step",
    "sweep": "memprof.api.sweep",
    "track": "memprof.api.track",
    "layer_table": "memprof.api.table",
    "get_model": "memprof.models",
    "get_model_info": "memprof.models",
    "list_models": "memprof.models",
    "StrategyComparison": "memprof.rendering.compare",
    "LayerTable": "memprof.rendering.layer_table",
    "StepProfile": "memprof.rendering.step",
    "SweepResult": "memprof.rendering.sweep",
    "TrackRecording": "memprof.rendering.tracked",
    "AdditiveCoupling": "memprof.reversible",
    "AffineCoupling": "memprof.reversible",
    "check_invertible": "memprof.reversible",
    "ChannelZeroPad": "memprof.reversible",
    "Invertible1x1Conv": "memprof.reversible",
    "InvertibleDownsample": "memprof.reversible",
    "ReversibleSequence": "memprof.reversible",
    "OutOfMemory": "memprof.errors",
    "UsageError": "memprof.validation",
    "format_bytes": "memprof.units",
    "parse_bytes": "memprof.units",
}

__all__ = sorted([*_PUBLIC, "__version__"])

if TYPE_CHECKING:  # pragma: no cover - what type checkers and IDEs see
    from . import reversible
    from .api.compare import compare_strategies
    from .api.step import fit_batch, fit_batch_size, profile_step
    from .api.sweep import sweep
    from .api.table import layer_table
    from .api.track import track
    from .errors import OutOfMemory
    from .models import get_model, get_model_info, list_models
    from .rendering.compare import StrategyComparison
    from .rendering.layer_table import LayerTable
    from .rendering.step import StepProfile
    from .rendering.sweep import SweepResult
    from .rendering.tracked import TrackRecording
    from .reversible import (
        AdditiveCoupling,
        AffineCoupling,
        ChannelZeroPad,
        Invertible1x1Conv,
        InvertibleDownsample,
        ReversibleSequence,
        check_invertible,
    )
    from .units import format_bytes, parse_bytes
    from .validation import UsageError


def __getattr__(name: str) -> Any:
    try:
        module = importlib.import_module(_PUBLIC[name])
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
