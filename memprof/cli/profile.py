"""`memprof profile MODEL`: the memory of one training step, measured or estimated."""

from __future__ import annotations

import argparse

from ..units import DTYPES

FORMATS = ("text", "markdown", "json")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_step_options, model_help

    p = sub.add_parser(
        "profile",
        help="memory of one training step: allocator peak, breakdown at the peak, module peaks",
        description="Run one steady-state training step (forward, loss, backward, optimizer step, "
        "after one warm-up step) and report its peak at the allocator, the live bytes at the peak "
        "by category, the activation peak, per-module forward/backward peaks and the step time. "
        "With --estimate nothing is allocated (FakeTensorMode).",
    )
    p.add_argument("model", help=model_help())
    add_step_options(p)
    p.add_argument("--batch-size", default="32", help="samples per step (default: 32)")
    p.add_argument("--input-shape", default=None,
                   help="one sample's shape, e.g. 3,32,32 (default: the registered model's; "
                   "required for package.module:factory)")
    p.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPES)} (default: float32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--estimate", action="store_true",
                   help="estimate under FakeTensorMode instead of measuring; for cuda applies the "
                   "caching-allocator model (default: off)")
    p.add_argument("--format", default="text", help=f"{', '.join(FORMATS)} (default: text)")
    p.add_argument("--timeline", default=None, metavar="PATH.png",
                   help="also write the timeline of live bytes by category (default: none)")
    p.set_defaults(func=run)


def resolve_model(spec: str, input_shape: str | None, inputs_given: bool = False) -> tuple[object, str, tuple[int, ...] | None]:
    """(model or registered name, display name, input shape or None) for a name or a factory spec.

    A registered model is returned by name and built only by :func:`build_model`, after the
    arguments have been checked.
    """
    from ..aggregation.table import parse_input_shape
    from ..models import get_model_info
    from ._common import load_model

    model = load_model(spec)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    if isinstance(model, str):
        if inputs_given:
            return model, model, shape
        return model, model, shape or tuple(get_model_info(model).input_shape)
    return model, spec, shape


def build_model(model: object) -> object:
    """The module for a registered name (or the module itself)."""
    from ..models import get_model

    return get_model(model) if isinstance(model, str) else model


def run(args: argparse.Namespace) -> int:
    from ..aggregation.step import check_step_args, profile_step
    from ..errors import UsageError, check_choice

    check_choice("format", args.format, FORMATS)
    if args.timeline is not None and not str(args.timeline).lower().endswith(".png"):
        raise UsageError(f"--timeline {args.timeline!r} must name a .png file")
    from ._common import step_options

    step = step_options(args)
    model, name, shape = resolve_model(args.model, args.input_shape, inputs_given=step["inputs"] is not None)
    check_step_args(args.batch_size, shape, step["optimizer"], args.dtype, args.device, args.estimate,
                    inputs=step["inputs"], autocast=step["autocast"], accumulation_steps=step["accumulation_steps"])
    prof = profile_step(build_model(model), int(args.batch_size), shape, dtype=args.dtype, device=args.device,
                        estimate=args.estimate, name=name, **step)
    if args.format == "json":
        print(prof.to_json(), end="")
    elif args.format == "markdown":
        print(prof.to_markdown(), end="")
    else:
        print(prof.to_text(), end="")
    if args.timeline is not None:
        import sys

        prof.plot(args.timeline)
        print(f"wrote {args.timeline}", file=sys.stderr)
    return 0
