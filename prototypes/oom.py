"""Prototype: tell an allocator's out-of-memory from a model that rejects its input.

torch.OutOfMemoryError (CUDA; torch.cuda.OutOfMemoryError is the same class) is a RuntimeError
subclass; the CPU allocator raises a plain RuntimeError whose text holds
"DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes". Python's own
MemoryError covers numpy and the interpreter.
"""
from __future__ import annotations

import re

import torch

_CPU = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")
_CUDA = re.compile(r"Tried to allocate ([0-9.]+) (B|KiB|MiB|GiB|TiB)")
_SCALE = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and ("DefaultCPUAllocator: can't allocate memory" in str(exc)
                                              or "CUDA out of memory" in str(exc))


def requested_bytes(exc: BaseException) -> int | None:
    text = str(exc)
    if m := _CPU.search(text):
        return int(m.group(1))
    if m := _CUDA.search(text):
        return int(float(m.group(1)) * _SCALE[m.group(2)])
    return None


if __name__ == "__main__":
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    for make in (lambda: torch.empty(10**12), lambda: torch.nn.Conv2d(3, 64, 3)(torch.randn(20000, 3, 32, 32)),
                 lambda: torch.nn.Conv2d(3, 64, 3)(torch.randn(2, 3, 2, 2)[:, :, :1])):
        try:
            make()
        except Exception as exc:  # noqa: BLE001
            print(type(exc).__name__, is_out_of_memory(exc), requested_bytes(exc), str(exc)[:80])
