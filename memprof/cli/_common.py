"""Helpers shared by the CLI verbs: model specs and output files."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UsageError

__all__ = ["add_step_options", "load_model", "model_help", "step_options", "write_output"]


def model_help() -> str:
    """The help text of a MODEL argument, listing the registered names."""
    from ..models import list_models

    return (f"a registered model ({', '.join(list_models())}) or package.module:factory "
            "(a callable returning an nn.Module; needs --input-shape)")


def load_model(spec: str) -> str | nn.Module:
    """A registered name as is, or the module built by ``package.module:factory``.

    Args:
        spec: a name from :func:`memprof.models.list_models`, or ``package.module:factory``
            where ``factory()`` returns an ``nn.Module`` (imported with the current directory
            on ``sys.path``).

    Returns:
        The name (registered models are built by the library) or the built module.

    Raises:
        memprof.errors.UsageError: for an unknown name (listing the registered ones), a module
            or attribute that cannot be imported, or a factory that returns no ``nn.Module``.
    """
    from ..models import list_models

    if ":" not in spec:
        if spec not in list_models():
            raise UsageError(
                f"unknown model {spec!r}; allowed: {', '.join(list_models())} "
                "(or package.module:factory)"
            )
        return spec
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` and uvicorn do: import from here
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load model {spec!r}: {exc}") from None
    if callable(obj) and not isinstance(obj, nn.Module):
        try:
            model = obj()
        except Exception as exc:  # the user's factory: report it in one line
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise UsageError(f"model factory {spec!r} failed: {type(exc).__name__}: {first}") from exc
    else:
        model = obj
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {spec!r} gave a {type(model).__name__}, not an nn.Module")
    return model


def write_output(text: str, out: str | None) -> None:
    """Print ``text``, or write it atomically to ``out`` (and say where)."""
    if out is None:
        sys.stdout.write(text)
        return
    from ..reporting import atomic_write_text

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
    from ..aggregation.user_step import parse_input_spec, parse_optimizer_spec
    from ..errors import check_positive_int

    name, settings = parse_optimizer_spec(args.optimizer)
    return {
        "inputs": [parse_input_spec(s) for s in args.input] if args.input else None,
        "optimizer": name,
        "optimizer_settings": settings,
        "autocast": args.autocast,
        "accumulation_steps": check_positive_int("--accumulation-steps", args.accumulation_steps),
    }
