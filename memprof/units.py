"""Units, decided once: bytes internally, MiB/GiB (2**20, 2**30) on display, labelled as such; counts with separators."""

from __future__ import annotations

import math
import re
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a dtype is measured, not with the units
    import torch

__all__ = ["KiB", "MiB", "GiB", "TiB", "table_unit", "dtype_size", "format_bytes", "format_count", "is_blank", "parse_bytes", "to_mib"]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_UNITS = {
    "": 1, "b": 1,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": KiB, "m": MiB, "g": GiB,
}


def to_mib(nbytes: float) -> float:
    """Bytes to MiB (2**20)."""
    return nbytes / MiB


def format_bytes(nbytes: float, unit: str | None = None, precision: int = 2) -> str:
    """Render a byte count with an explicit binary unit, e.g. ``'311.75 MiB'``.

    Args:
        nbytes: the number of bytes.
        unit: force ``"B"``, ``"KiB"``, ``"MiB"``, ``"GiB"`` or ``"TiB"``; by default the
            largest unit that keeps the value at or above 1.
        precision: decimals shown.

    Returns:
        The formatted string, always with its unit.

    Raises:
        ValueError: for an unknown unit.
    """
    scales = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}
    if unit is None:
        unit = "B"
        for name in ("TiB", "GiB", "MiB", "KiB"):
            if abs(nbytes) >= scales[name]:
                unit = name
                break
    if unit not in scales:
        raise ValueError(f"unknown unit {unit!r}; allowed: {', '.join(scales)}")
    if unit == "B":
        return f"{int(nbytes)} B"
    return f"{nbytes / scales[unit]:.{precision}f} {unit}"


def table_unit(largest: float) -> str:
    """The one unit of a table's byte column, scaled to its largest value.

    MiB until the largest value reaches 10,000 MiB, then GiB, then TiB (from 10,000 GiB): the
    column stays comparable row by row and never shows more than four digits before the point.
    """
    if abs(largest) >= 10_000 * GiB:
        return "TiB"
    if abs(largest) >= 10_000 * MiB:
        return "GiB"
    return "MiB"


def parse_bytes(text: str | int) -> int:
    """Parse a memory size such as ``16GiB``, ``16GB``, ``512 MiB`` or ``17179869184``.

    ``GiB``/``MiB``/``KiB`` (and bare ``G``/``M``/``K``) are binary; ``GB``/``MB``/``KB`` decimal.

    Raises:
        ValueError: when the text is not a positive size, naming it and the accepted units.
    """
    if isinstance(text, int):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(
                f"cannot parse memory size {text!r}; use a number with an optional unit "
                "(B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), e.g. 16GiB"
            )
        value, unit = float(m.group(1)), m.group(2).lower()
    nbytes = int(value * _UNITS[unit])
    if nbytes <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return nbytes


def dtype_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    import torch

    return torch.empty((), dtype=dtype, device="meta").element_size()


def format_count(value: Any) -> str:
    """An integer with thousands separators (``20,565,834``); blanks for None/NaN."""
    if is_blank(value):
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def is_blank(value: Any) -> bool:
    """None, NaN or pandas' NA: a cell shown empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ in ("NAType", "NaTType")  # pandas.NA in nullable columns
