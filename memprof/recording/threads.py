"""Measurement conditions: one intra-op thread for timings and tests on a shared machine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the body on one intra-op thread, then restore the previous count.

    On a loaded 2-core machine two OpenMP threads spin-wait on each other and a step can run
    10x slower; one thread makes CPU-time ratios and test durations far steadier.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
