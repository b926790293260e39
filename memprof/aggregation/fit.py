"""The batch-size search of ``fit_batch_size``: the largest batch whose step peak fits a budget.

Pure arithmetic over a ``peak(batch_size)`` function that someone else evaluates (each call
is one estimated step): nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["fitted_figure", "search_batch_size"]


def fitted_figure(profile: Any) -> tuple[str, int]:
    """``(name, bytes)`` of the figure a fit holds to the budget.

    On the CPU the estimated allocator peak (tensors and kernel scratch); on CUDA the predicted
    ``max_memory_reserved``: the device must hold every reserved segment, and reserved >= allocated.
    """
    if str(profile.device).startswith("cuda") and profile.reserved_peak_bytes is not None:
        return "predicted max_memory_reserved", int(profile.reserved_peak_bytes)
    return "estimated allocator peak", int(profile.peak_bytes)


# NOTE [ Fitting the batch size ]
# The step's peak is a maximum of functions affine in the batch size, so it is convex and
# piecewise linear: the line through two fitting probes, extended to the budget, never
# undershoots the answer. The search grows along that line (at least doubling) until a probe
# fails, then narrows the bracket with the line between its ends (which never overshoots). When
# a line probe gains less than bisection would, the next probe is the size just above it if it
# fitted (the two ends then usually lie on one linear piece and the line landed on the answer:
# VGG-19 at 16 GiB takes 6 estimates instead of 7), else the bracket is halved once; a few probes
# usually suffice where plain bisection up to millions would take forty.
def search_batch_size(peak: Callable[[int], int], memory: int, max_batch_size: int, start: int = 1) -> int:
    """The largest batch size ``start <= b <= max_batch_size`` with ``peak(b) <= memory`` (NOTE [ Fitting the batch size ]).

    Args:
        peak: the step peak in bytes at a batch size (called once per probe; cache it).
        memory: the budget in bytes.
        max_batch_size: never probe above this.
        start: the smallest batch size to consider (the smallest the model accepts).

    Returns:
        The batch size, or 0 when not even ``start`` fits.
    """
    if peak(start) > memory:
        return 0
    lo, hi = _grow(peak, memory, max_batch_size, start)
    if hi is None:
        return lo
    return _narrow(peak, memory, lo, hi)


def _grow(peak: Callable[[int], int], memory: int, max_batch_size: int, start: int = 1) -> tuple[int, int | None]:
    """Grow along the line through the last two fitting probes until one fails: ``(fits, fails or None)``."""
    lo, hi, prev = start, None, None
    while hi is None and lo < max_batch_size:
        if prev is None:
            guess = 2 * lo
        else:
            slope = (peak(lo) - peak(prev)) / (lo - prev)
            guess = lo + int((memory - peak(lo)) / slope) if slope > 0 else 2 * lo
            guess = max(guess, 2 * lo) if peak(lo) < memory else lo + 1
        guess = min(guess, max_batch_size)
        if peak(guess) <= memory:
            prev, lo = lo, guess
        else:
            hi = guess
    return lo, hi


def _narrow(peak: Callable[[int], int], memory: int, lo: int, hi: int) -> int:
    """Shrink the bracket ``[lo fits, hi fails]`` to adjacent sizes; returns ``lo``."""
    while hi - lo > 1:
        f_lo, f_hi = peak(lo), peak(hi)
        mid = lo + int((memory - f_lo) * (hi - lo) / (f_hi - f_lo)) if f_hi > f_lo else (lo + hi) // 2
        mid = min(max(mid, lo + 1), hi - 1)
        width = hi - lo
        fits = peak(mid) <= memory
        if fits:
            lo = mid
        else:
            hi = mid
        if hi - lo > width // 2 and hi - lo > 1:  # the line gained little
            # from a fitting chord probe the next size usually settles it: the chord of a convex
            # peak never overshoots, and where lo and hi lie on one linear piece it lands on the answer
            step = lo + 1 if fits else (lo + hi) // 2
            if peak(step) <= memory:
                lo = step
            else:
                hi = step
    return lo
