"""Helpers shared by the CLI verbs: model specs and output files."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a model is loaded, not for --help
    from torch import nn

from ..validation import UsageError, parse_input_shape

__all__ = ["add_model_option", "add_step_options", "build_model", "check_without_torch", "load_model", "model_help",
           "model_options", "resolve_model", "shared_model_options", "step_options", "user_model_and_step",
           "write_output"]


def model_help() -> str:
    """The help text of a MODEL argument, naming the built-in models (without importing them)."""
    from ..vocabulary import BUILTIN_MODELS

    return (f"a registered model ({', '.join(BUILTIN_MODELS)}, or one registered with register_model) or "
            "package.module:factory (a callable returning an nn.Module; needs --input-shape)")


def add_model_option(p: Any, whose: str = "the registered model's", without: tuple[str, ...] = ()) -> None:
    """The repeatable ``--model-option NAME=VALUE``, its help naming every built-in model's options
    but those ``without`` (set by an option of the verb's own, as ``memprof train --reversible``)."""
    from ..vocabulary import MODEL_OPTIONS

    by_option: dict[str, list[str]] = {}
    for model, options in MODEL_OPTIONS.items():
        for name in (n for n in options if n not in without):
            by_option.setdefault(name, []).append(model)
    groups: list[tuple[list[str], list[str]]] = []  # (models, options) with the same models
    for name, models in by_option.items():
        if groups and groups[-1][0] == models:
            groups[-1][1].append(name)
        else:
            groups.append((models, [name]))
    defaults = {name: default for options in MODEL_OPTIONS.values() for name, default in options.items()}

    def shown(name: str) -> str:
        value = defaults[name]
        return f"{name}={str(value).lower() if isinstance(value, bool) else value}"

    groups.sort(key=lambda g: -len(g[1]))  # the longest list first: vit, revvit
    listing = "; ".join(f"{', '.join(models)}: {', '.join(map(shown, names))}" for models, names in groups)
    p.add_argument("--model-option", action="append", default=None, metavar="NAME=VALUE",
                   help=f"an option of {whose} builder, repeatable, e.g. --model-option depth=6 "
                   f"(options and defaults: {listing}"
                   f"{'' if 'reversible' in without else '; reversible=false builds the plain-autograd twin'}) "
                   "(default: the model's own)")


def model_options(args: Any) -> dict[str, Any]:
    """The ``--model-option`` values, checked by name and type without importing torch.

    Raises:
        memprof.validation.UsageError: for options given with a package.module:factory, or an
            option the registered model does not take (or a value of the wrong type).
    """
    from ..validation import parse_model_options
    from ..vocabulary import MODEL_OPTIONS

    specs = getattr(args, "model_option", None)
    if not specs:
        return {}
    if ":" in args.model:
        raise UsageError(f"--model-option is for a registered model; {args.model!r} builds its own, "
                         "so give the options to the factory")
    return parse_model_options(specs, args.model, MODEL_OPTIONS.get(args.model, {}))


def check_without_torch(args: Any) -> None:
    """The checks of a verb's plain options that need no torch, run before the library is imported.

    The library checks the same values again, with the same functions and so the same messages
    (NOTE [ Starting without torch ] in :mod:`memprof.vocabulary`): a typo is answered at once.
    Only the options the verb has are checked: ``--batch-size``, ``--batch-sizes``, ``--dtype``,
    ``--optimizer`` (its name), ``--repeats`` and ``--strategies``.
    """
    from ..validation import check_choice, check_positive_int, parse_batch_sizes, parse_names
    from ..vocabulary import COMPARE_FAMILIES, DTYPE_NAMES, OPTIMIZERS

    if getattr(args, "batch_size", None) is not None:
        check_positive_int("batch size", args.batch_size)
    if getattr(args, "batch_sizes", None) is not None:
        parse_batch_sizes(args.batch_sizes)
    if getattr(args, "optimizer", None) is not None and isinstance(args.optimizer, str):
        check_choice("optimizer", args.optimizer.partition(":")[0], OPTIMIZERS)
    if getattr(args, "dtype", None) is not None:
        check_choice("dtype", args.dtype, DTYPE_NAMES)
    if getattr(args, "repeats", None) is not None:
        check_positive_int("repeats", args.repeats)
    if getattr(args, "strategies", None) is not None and getattr(args, "family", None) in COMPARE_FAMILIES:
        parse_names(args.strategies, "strategy", COMPARE_FAMILIES[args.family])


def shared_model_options(specs: list[str] | None, models: str) -> dict[str, Any]:
    """``--model-option`` values that every one of the comma-separated ``models`` takes (no torch).

    A name that is not a built-in model is left to the library's own check of the names.

    Raises:
        memprof.validation.UsageError: for options given with a package.module:factory, or an
            option one of the models does not take (naming that model), or a value of the wrong type.
    """
    from ..validation import parse_model_options
    from ..vocabulary import MODEL_OPTIONS

    options: dict[str, Any] = {}
    for name in (n.strip() for n in str(models).split(",")) if specs else ():
        if ":" in name:
            raise UsageError(f"--model-option is for registered models; {name!r} builds its own, "
                             "so give the options to the factory")
        if name in MODEL_OPTIONS:
            options = parse_model_options(specs, name, MODEL_OPTIONS[name])
    return options


def _call_factory(spec: str, obj: Any) -> Any:
    """Call a user's factory, reporting its failure in one line."""
    try:
        return obj()
    except SystemExit as exc:  # a factory that exits (argparse inside it, sys.exit): one line, not exit code 3
        raise UsageError(f"model factory {spec!r} called sys.exit({exc.code!r}) instead of returning a model") from None
    except Exception as exc:  # the user's factory: report it in one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UsageError(f"model factory {spec!r} failed: {type(exc).__name__}: {first}") from exc


def load_model(spec: str) -> str | nn.Module:
    """A registered name as is, or the module built by ``package.module:factory``.

    Args:
        spec: a name from :func:`memprof.models.list_models`, or ``package.module:factory``
            where ``factory()`` returns an ``nn.Module`` (imported with the current directory
            on ``sys.path``).

    Returns:
        The name (registered models are built by the library) or the built module.

    Raises:
        memprof.validation.UsageError: for an unknown name (listing the registered ones), a
            module or attribute that cannot be imported, or a factory that returns no ``nn.Module``.
    """
    if ":" not in spec:
        # only memprof.models registers models: until it is imported, the names are the built-in ones
        # (NOTE [ Starting without torch ] in memprof.vocabulary)
        if "memprof.models" in sys.modules:
            from ..models import list_models

            known = list_models()
        else:
            from ..vocabulary import BUILTIN_MODELS

            known = sorted(BUILTIN_MODELS)  # as list_models() lists them
        if spec not in known:
            raise UsageError(f"unknown model {spec!r}; allowed: {', '.join(known)} (or package.module:factory)")
        return spec
    from torch import nn

    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` and uvicorn do: import from here
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load model {spec!r}: {exc}") from None
    model = _call_factory(spec, obj) if callable(obj) and not isinstance(obj, nn.Module) else obj
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {spec!r} gave a {type(model).__name__}, not an nn.Module")
    return model


def resolve_model(spec: str, input_shape: str | None, inputs_given: bool = False,
                  options: dict[str, Any] | None = None) -> tuple[str | nn.Module, str, tuple[int, ...] | None]:
    """(model or registered name, display name, input shape or None) for a name or a factory spec.

    A registered model is returned by name and built only by :func:`build_model`, after the
    arguments have been checked; its ``options`` (:func:`model_options`) are checked here, and
    the display name shows them (``revvit (depth=6)``).
    """
    from ..models import get_model_info
    from ..models.registry import check_model_options, model_label

    model = load_model(spec)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    if isinstance(model, str):
        check_model_options(model, options)
        name = model_label(model, options)
        if inputs_given:  # --input specs replace the registered model's input shape
            return model, name, shape
        return model, name, shape or get_model_info(model).input_shape_for(options)
    return model, spec, shape


def build_model(model: str | nn.Module, options: dict[str, Any] | None = None) -> nn.Module:
    """The module for a registered name and its options (or the module itself)."""
    from ..models import get_model

    return get_model(model, **(options or {})) if isinstance(model, str) else model


def user_model_and_step(args: Any) -> tuple[str | nn.Module, str, tuple[int, ...] | None, dict[str, Any],
                                          dict[str, Any]]:
    """(model or registered name, display name, input shape, step options, model options) of ``profile``/``fit``.

    The checks that need no torch run first (:func:`check_without_torch`, the model options, an
    unknown model name), then the model is resolved (:func:`resolve_model`); the caller builds it
    (:func:`build_model`) once the rest of its arguments are checked.
    """
    check_without_torch(args)
    options = model_options(args)
    if ":" not in args.model:
        load_model(args.model)  # an unknown name, before torch is imported
    step = step_options(args)
    model, name, shape = resolve_model(args.model, args.input_shape, inputs_given=step["inputs"] is not None,
                                       options=options)
    return model, name, shape, step, options


def write_output(text: str, out: str | None) -> None:
    """Print ``text``, or write it atomically to ``out`` (and say where)."""
    if out is None:
        sys.stdout.write(text)
        return
    from ..reports.files import atomic_write_text

    path = atomic_write_text(out, text)
    print(f"wrote {path}", file=sys.stderr)



def add_step_options(p: Any) -> None:
    """The options that describe a user's step: --input, --optimizer, --autocast, --accumulation-steps."""
    p.add_argument("--input", action="append", default=None, metavar="NAME:DTYPE:SHAPE[:RANGE]",
                   help="one model input, repeatable: one sample's shape (the batch dimension scales with "
                   "--batch-size) and for integer inputs the value range, e.g. input_ids:int64:128:50257 "
                   "(several inputs, or a name other than x, are passed by keyword) (default: one float "
                   "input of --input-shape)")
    p.add_argument("--optimizer", default="sgd",
                   help="sgd (lr 0.1, momentum 0.9), adam or adamw (lr 1e-3), with settings after a colon, "
                   "e.g. adamw:lr=1e-4,weight_decay=0.1 (default: sgd)")
    p.add_argument("--autocast", default=None,
                   help="run forward and loss under torch.autocast with this dtype: bfloat16 or float16 "
                   "(default: off)")
    p.add_argument("--accumulation-steps", default="1",
                   help="forward and backward this many times per optimizer step (default: 1)")


def step_options(args: Any) -> dict[str, Any]:
    """Keyword arguments of profile_step from the options of :func:`add_step_options`."""
    from ..recording.user_step import parse_input_spec, parse_optimizer_spec

    name, settings = parse_optimizer_spec(args.optimizer)
    return {
        "inputs": [parse_input_spec(s) for s in args.input] if args.input else None,
        "optimizer": name,
        "optimizer_settings": settings,
        "autocast": args.autocast,
        "accumulation_steps": args.accumulation_steps,
    }
