"""Prototype of a lazy ``memprof/__init__.py`` (PEP 562 module ``__getattr__``).

``import memprof`` then costs nothing; ``memprof.profile_step`` imports the module that defines
it on first access and caches it in the module's globals. Type checkers see the eager imports
under TYPE_CHECKING.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it (relative to the package)
_LAZY: dict[str, str] = {
    "reversible": ".reversible",
    "LayerTable": ".aggregation",
    "layer_table": ".aggregation",
    "StepProfile": ".aggregation.step",
    "profile_step": ".aggregation.step",
    "fit_batch_size": ".aggregation.step",
    "format_bytes": ".units",
    "parse_bytes": ".units",
    "list_models": ".models",
}

__all__ = sorted([*_LAZY, "__version__"])

if TYPE_CHECKING:  # pragma: no cover
    from . import reversible  # noqa: F401
    from .aggregation.step import StepProfile, fit_batch_size, profile_step  # noqa: F401


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = module if module.__name__.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value  # cache: __getattr__ runs once per name
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
