"""A small model registry: ``register_model``, ``list_models``, ``get_model``, ``get_model_info``.

Modelled on torchvision's ``models/_api.py``: a builder registers itself under a name with a
decorator, and everything else (the CLI's choices, the parametrized tests, the reports) reads
the names back from :func:`list_models`, so a new model is wired in by being registered.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..reversible import set_reversible
from ..validation import UsageError, check_choice, check_positive_int

__all__ = ["ModelInfo", "get_model", "get_model_info", "list_models", "register_model"]

#: A builder takes the number of classes (and maybe keyword options) and returns a fresh model.
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of memprof needs to know about a registered model without building it.

    Attributes:
        name: the registered name.
        builder: ``builder(num_classes) -> nn.Module``.
        input_shape: the shape of one input sample, without the batch dimension.
        table_depth: the default granularity of ``memprof table``: rows are the modules whose
            qualified name has this many dot-separated parts (and leaves above that depth).
            Chosen so that the default table reproduces the deck's rows.
        description: one line for listings.
    """

    name: str
    builder: Builder
    input_shape: tuple[int, ...] = (3, 32, 32)
    table_depth: int = 1
    description: str = ""


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    input_shape: tuple[int, ...] = (3, 32, 32),
    table_depth: int = 1,
    description: str = "",
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes) -> nn.Module`` under ``name``.

    Args:
        name: the name :func:`get_model` will accept.
        input_shape: one sample's input shape (no batch dimension).
        table_depth: default ``memprof table`` depth (see :class:`ModelInfo`).
        description: one line for listings.

    Returns:
        The decorator, which returns the builder unchanged.

    Raises:
        ValueError: if ``name`` is already registered (the message lists the registered names).
    """

    def wrapper(builder: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(
                f"a model named {name!r} is already registered; registered: {', '.join(list_models())}"
            )
        _MODELS[name] = ModelInfo(name, builder, tuple(input_shape), table_depth, description)
        return builder

    return wrapper


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` registered under ``name``.

    Raises:
        memprof.errors.UsageError: (a ValueError) for an unknown name, listing the known ones.
    """
    check_choice("model", name, list_models())
    return _MODELS[name]


def get_model(name: str, num_classes: int = 10, reversible: bool = True, **options: Any) -> nn.Module:
    """Build the model registered under ``name``.

    Args:
        name: a name from :func:`list_models`.
        num_classes: the width of the classifier's output.
        reversible: with False, every ReversibleSequence in the model runs under ordinary
            autograd (it stores its activations). The architecture and the state dict are the
            same either way, so weights can be copied between the two twins.
        **options: keyword arguments of the model's builder (``width``, ``depth``, ``heads``
            ... for ``vit`` and ``revvit``); models without options accept none.

    Returns:
        A freshly initialised ``nn.Module`` in training mode.

    Raises:
        memprof.errors.UsageError: (a ValueError) for an unknown name (listing the known ones)
            or a ``num_classes`` that is not a positive integer, or an option the builder
            does not take (or rejects).
    """
    info = get_model_info(name)
    num_classes = check_positive_int("num_classes", num_classes)
    if options:
        accepted = inspect.signature(info.builder).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            allowed = [n for n in accepted if n != "num_classes"]
            raise UsageError(f"model {name!r} takes no option(s) {', '.join(sorted(options))}; "
                             f"allowed: {', '.join(allowed) or 'none'}")
    return set_reversible(info.builder(num_classes, **options), bool(reversible))
