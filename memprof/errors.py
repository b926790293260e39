"""Errors: :class:`UsageError` (bad input; checks live in :mod:`memprof.validation`) and
:class:`OutOfMemory`, the one way an allocator's failure is reported.

NOTE [ Out of memory is a result ]
A step that does not fit is an answer, not a crash. The CUDA caching allocator raises
``torch.OutOfMemoryError`` (a RuntimeError); the c10 CPU allocator raises a plain RuntimeError
whose text holds "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes";
Python's own MemoryError covers the interpreter and NumPy. :func:`is_out_of_memory` recognises
the three, so that a model that rejects its input (a shape error, also a RuntimeError) is never
reported as out of memory, nor an out-of-memory as a rejected input. Whoever runs real steps
turns the failure into :class:`OutOfMemory` with the batch size (:func:`out_of_memory`); sweeps and
comparisons keep it as a row, the CLI as one line and exit code 2.
"""

from __future__ import annotations

import re

from .validation import UsageError, check_choice, check_positive_int

__all__ = ["OutOfMemory", "UsageError", "check_choice", "check_positive_int", "is_out_of_memory", "out_of_memory",
           "requested_bytes"]

_CPU_REQUEST = re.compile(r"you tried to allocate (\d+) bytes")
_CUDA_REQUEST = re.compile(r"Tried to allocate ([0-9.]+) (B|KiB|MiB|GiB|TiB)")
_SCALE = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


class OutOfMemory(RuntimeError):
    """A training step ran out of memory (NOTE [ Out of memory is a result ]).

    Attributes:
        batch_size: the batch that did not fit.
        needed_bytes: the allocation that failed (at least this much more was needed), if known.
        device: where it ran (``cpu``, ``cuda:0``).
    """

    def __init__(self, batch_size: int, needed_bytes: int | None, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.needed_bytes = needed_bytes
        self.device = device
        super().__init__(self.status)

    @property
    def status(self) -> str:
        """The row status of a sweep or comparison: ``out of memory at batch N: needed X more``."""
        from .units import format_bytes

        needed = "an unknown amount" if self.needed_bytes is None else format_bytes(self.needed_bytes)
        return f"out of memory at batch {self.batch_size}: needed {needed} more"

    def __str__(self) -> str:
        return f"{self.status} on {self.device}; try a smaller batch size (memprof fit estimates the largest)"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's out-of-memory error (CUDA, the CPU allocator or Python's)."""
    if isinstance(exc, (OutOfMemory, MemoryError)):
        return True
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return "can't allocate memory" in text or "CUDA out of memory" in text or "out of memory" in text.lower()


def requested_bytes(exc: BaseException) -> int | None:
    """The size of the allocation that failed, from the allocator's message (None if it names none)."""
    if isinstance(exc, OutOfMemory):
        return exc.needed_bytes
    text = str(exc)
    if m := _CPU_REQUEST.search(text):
        return int(m.group(1))
    if m := _CUDA_REQUEST.search(text):
        return int(float(m.group(1)) * _SCALE[m.group(2)])
    return None


def out_of_memory(exc: BaseException, batch_size: int, device: object = "cpu") -> OutOfMemory:
    """The :class:`OutOfMemory` for an allocator's error at ``batch_size`` (call only if :func:`is_out_of_memory`)."""
    if isinstance(exc, OutOfMemory):
        return exc
    return OutOfMemory(batch_size, requested_bytes(exc), str(device))
