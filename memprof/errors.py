"""Compatibility name for :mod:`memprof.validation`, where :class:`UsageError` and every check live."""

from __future__ import annotations

from .validation import UsageError, check_choice, check_positive_int

__all__ = ["UsageError", "check_choice", "check_positive_int"]
