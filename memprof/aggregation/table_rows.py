"""A table row and the table's totals, and shapes as the deck prints them (per sample)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Shape", "TableRow", "Totals", "per_sample", "shape_text", "size_int", "size_text"]

Shape = tuple[int, ...]


def shape_text(shapes: Sequence[Shape]) -> str:
    """Per-sample shapes as the deck prints them: ``(64,32,32)``, ``512``; several comma-joined."""
    parts = []
    for s in shapes:
        parts.append(str(s[0]) if len(s) == 1 else "(" + ",".join(map(str, s)) + ")")
    return ", ".join(parts)


def size_text(v: Shape | None) -> str:
    """A kernel or stride: ``3`` when square, ``3x1`` otherwise, empty when absent."""
    if not v:
        return ""
    return str(v[0]) if len(set(v)) == 1 else "x".join(map(str, v))


def size_int(v: Shape | None) -> int | None:
    """A square kernel or stride as one integer (None when absent or not square)."""
    return v[0] if v and len(set(v)) == 1 else None


def per_sample(shapes: Sequence[Shape], batch_size: int) -> tuple[Shape, ...]:
    """Shapes without their leading batch dimension (where it is the batch size)."""
    return tuple(tuple(s[1:]) if s and s[0] == batch_size else tuple(s) for s in shapes)


def _shape_json(shapes: tuple[Shape, ...]) -> Any:
    if not shapes:
        return None
    if len(shapes) == 1:
        return list(shapes[0])
    return [list(s) for s in shapes]


@dataclass(frozen=True)
class TableRow:
    """One displayed row. ``activations`` is per sample (deck convention); bytes at the batch size."""

    name: str
    layer: str
    input_shape: tuple[Shape, ...]
    output_shape: tuple[Shape, ...]
    in_channels: int | None
    out_channels: int | None
    kernel: Shape | None
    stride: Shape | None
    params: int
    activations: int
    saved_bytes: int
    grad_bytes: int
    param_bytes: int
    reversible: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the row (shapes as lists; a list of lists when there are several)."""
        return {
            "name": self.name,
            "layer": self.layer,
            "input_shape": _shape_json(self.input_shape),
            "output_shape": _shape_json(self.output_shape),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel": list(self.kernel) if self.kernel else None,
            "stride": list(self.stride) if self.stride else None,
            "params": self.params,
            "activations": self.activations,
            "saved_bytes": self.saved_bytes,
            "grad_bytes": self.grad_bytes,
        }


@dataclass(frozen=True)
class Totals:
    """The table's totals: the deck's form (parameters, activations) and the measured bytes."""

    params: int
    param_bytes: int
    grad_bytes: int
    activations: int
    activation_bytes: int
    saved_bytes: int

    def to_dict(self) -> dict[str, int]:
        """The JSON form."""
        return {
            "params": self.params,
            "param_bytes": self.param_bytes,
            "activations": self.activations,
            "activation_bytes": self.activation_bytes,
            "saved_bytes": self.saved_bytes,
            "grad_bytes": self.grad_bytes,
        }
