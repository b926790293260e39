"""Errors and the one place where user arguments are checked."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["UsageError", "check_choice", "check_positive_int"]


class UsageError(ValueError):
    """Bad input from a user: the message names the bad value and the allowed ones."""


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise UsageError listing them."""
    allowed = list(allowed)
    if value not in allowed:
        raise UsageError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as int if it is a positive integer, else raise UsageError."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(str(value))
        except ValueError:
            raise UsageError(f"{name} must be a positive integer, got {value!r}") from None
        value = as_int
    if value <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value
