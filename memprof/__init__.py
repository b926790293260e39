"""memprof: where the memory of a PyTorch training step goes, and reversible networks that cut it."""

from __future__ import annotations

__version__ = "0.1.0"

from . import reversible  # noqa: E402
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
    "ReversibleSequence",
    "__version__",
    "format_bytes",
    "parse_bytes",
    "reversible",
]
