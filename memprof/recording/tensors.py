"""Tensors inside op arguments and outputs, and the storages behind them (shared by the trackers)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = [
    "NO_STORAGE",
    "arg_tensors",
    "out_tensors",
    "storage_key",
    "storage_keys",
    "storages",
    "tensors_in",
    "writes_in_place",
]

#: What ``Tensor.untyped_storage()`` raises for a tensor without a plain storage (sparse,
#: nested, some subclasses); such tensors are not tracked.
NO_STORAGE: tuple[type[Exception], ...] = (RuntimeError, NotImplementedError, TypeError)


def storage_key(t: torch.Tensor) -> int | None:
    """An id for the untyped storage behind ``t`` (None for tensors without one)."""
    try:
        return t.untyped_storage()._cdata
    except NO_STORAGE:
        return None


# Types that are neither tensors nor containers of tensors: most arguments of an op.
_LEAF_TYPES: frozenset[type] = frozenset(
    {int, float, bool, complex, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format}
)


def tensors_in(obj: Any, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts (pytree is several times slower per op)."""
    if out is None:
        out = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        return out
    if isinstance(obj, dict):
        obj = obj.values()
    elif not isinstance(obj, (list, tuple)):
        return out
    # NOTE [ Cheap argument walk ]
    # Op arguments are mostly ints, bools and flat lists of ints (strides, paddings), and an
    # isinstance() against torch.Tensor costs ~0.1 us for a non-tensor: a type lookup in a set
    # skips those, and leaves are handled here instead of by a call each. Together ~4x faster
    # on a convolution's arguments (6 us -> 1.5 us).
    for o in obj:
        kind = type(o)
        if kind in _LEAF_TYPES:
            continue
        if kind is list or kind is tuple:  # one level inline: lists of ints, lists of tensors
            for p in o:
                if type(p) in _LEAF_TYPES:
                    continue
                if isinstance(p, torch.Tensor):
                    out.append(p)
                elif isinstance(p, (list, tuple, dict)):
                    tensors_in(p, out)
        elif isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, (list, tuple, dict)):
            tensors_in(o, out)
    return out


def arg_tensors(args: Any, kwargs: Any) -> list[torch.Tensor]:
    """The tensors among an op's arguments."""
    return tensors_in(args, tensors_in(kwargs) if kwargs else None)


def out_tensors(out: Any) -> Iterable[torch.Tensor]:
    """The tensors an op returned (most ops return exactly one)."""
    return (out,) if isinstance(out, torch.Tensor) else tensors_in(out)


def storages(tensors: Iterable[torch.Tensor]) -> Iterator[tuple[torch.UntypedStorage, int]]:
    """(storage, storage key) of each tensor that has a storage."""
    for t in tensors:
        try:
            st = t.untyped_storage()
        except NO_STORAGE:
            continue
        yield st, st._cdata


def storage_keys(args: Any, kwargs: Any) -> set[int]:
    """The storage keys of the tensors in an op's arguments."""
    return {key for _, key in storages(arg_tensors(args, kwargs))}


def writes_in_place(func: Any) -> bool:
    """True for ops with an argument written in place (resize_, set_, out= variants, add_, ...)."""
    try:
        return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)
    except AttributeError:
        return True
