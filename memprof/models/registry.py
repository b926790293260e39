"""A small model registry: ``register_model``, ``list_models``, ``get_model``, ``get_model_info``.

Modelled on torchvision's ``models/_api.py``: a builder registers itself under a name with a
decorator, and everything else (the CLI's choices, the parametrized tests, the reports) reads
the names back from :func:`list_models`, so a new model is wired in by being registered.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..reversible import set_reversible
from ..validation import UsageError, check_choice, check_positive_int

__all__ = ["ModelInfo", "check_model_options", "format_options", "get_model", "get_model_info", "list_models",
           "model_label", "register_model"]

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
        check_options: ``check_options(options)`` raises UsageError for builder options that do
            not go together (a ViT width not divisible by its heads), without building; None:
            the builder's signature is the only check.
        options_input_shape: ``options_input_shape(options)`` is one sample's input shape for
            the model built with these options (None: ``input_shape`` whatever the options).
    """

    name: str
    builder: Builder
    input_shape: tuple[int, ...] = (3, 32, 32)
    table_depth: int = 1
    description: str = ""
    check_options: Callable[[Mapping[str, Any]], Any] | None = None
    options_input_shape: Callable[[Mapping[str, Any]], tuple[int, ...]] | None = None

    def input_shape_for(self, options: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        """One sample's input shape for the model built with ``options`` (a ViT's ``image_size``)."""
        builder_options = {k: v for k, v in (options or {}).items() if k != "reversible"}
        if builder_options and self.options_input_shape is not None:
            return tuple(self.options_input_shape(builder_options))
        return tuple(self.input_shape)


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    input_shape: tuple[int, ...] = (3, 32, 32),
    table_depth: int = 1,
    description: str = "",
    check_options: Callable[[Mapping[str, Any]], Any] | None = None,
    options_input_shape: Callable[[Mapping[str, Any]], tuple[int, ...]] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes) -> nn.Module`` under ``name``.

    Args:
        name: the name :func:`get_model` will accept.
        input_shape: one sample's input shape (no batch dimension).
        table_depth: default ``memprof table`` depth (see :class:`ModelInfo`).
        description: one line for listings.
        check_options: checks the builder's keyword options without building (see :class:`ModelInfo`).
        options_input_shape: the input shape for given options (see :class:`ModelInfo`).

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
        _MODELS[name] = ModelInfo(name, builder, tuple(input_shape), table_depth, description, check_options,
                                  options_input_shape)
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
    check_model_options(name, options)
    return set_reversible(info.builder(num_classes, **options), bool(reversible))


def check_model_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check the options of :func:`get_model` for ``name`` without building anything.

    Args:
        name: a name from :func:`list_models`.
        options: keyword arguments of the model's builder, and ``reversible`` (a bool).

    Returns:
        The options as a dict (``get_model(name, **options)`` builds the model).

    Raises:
        memprof.errors.UsageError: (a ValueError) for an unknown model, an option the builder
            does not take (listing the ones it takes), a ``reversible`` that is not a bool, or
            values that do not go together (the model's ``check_options``).
    """
    info = get_model_info(name)
    options = dict(options or {})
    builder_options = {k: v for k, v in options.items() if k != "reversible"}
    if "reversible" in options and not isinstance(options["reversible"], bool):
        raise UsageError(f"model option reversible of {name!r} must be true or false, got {options['reversible']!r}")
    accepted = inspect.signature(info.builder).parameters
    if builder_options and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        allowed = [n for n in accepted if n != "num_classes"]
        unknown = sorted(set(builder_options) - set(allowed))
        if unknown:
            raise UsageError(f"model {name!r} takes no option(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join([*allowed, 'reversible'])}")
    if info.check_options is not None:
        info.check_options(builder_options)
    return options


def format_options(options: Mapping[str, Any]) -> str:
    """Model options as the command line spells them: ``depth=6, reversible=false``."""
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(options.items()))


def model_label(name: str, options: Mapping[str, Any] | None) -> str:
    """A registered name with its options: ``revvit (depth=6, reversible=false)``."""
    return f"{name} ({format_options(options)})" if options else name
