"""`memprof profile MODEL`: the memory of one training step, measured or estimated."""

from __future__ import annotations

import argparse
import sys

from ..vocabulary import DTYPES, FORMATS


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import model_help

    p = sub.add_parser(
        "profile",
        help="memory of one training step: allocator peak, breakdown at the peak, module peaks",
        description="Run one steady-state training step (forward, loss, backward, optimizer step, "
        "after one warm-up step) and report its peak at the allocator, the live bytes at the peak "
        "by category, the activation peak, per-module forward/backward peaks and the step time. "
        "With --estimate nothing is allocated (FakeTensorMode).",
    )
    p.add_argument("model", help=model_help())
    p.add_argument("--batch-size", default="32", help="samples per step (default: 32)")
    p.add_argument("--input-shape", default=None,
                   help="one sample's shape, e.g. 3,32,32 (default: the registered model's; "
                   "required for package.module:factory)")
    p.add_argument("--optimizer", default="sgd", help="sgd (momentum 0.9) or adam (default: sgd)")
    p.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPES)} (default: float32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--estimate", action="store_true",
                   help="estimate under FakeTensorMode instead of measuring; for cuda applies the "
                   "caching-allocator model (default: off)")
    p.add_argument("--format", default="text", help=f"{', '.join(FORMATS)} (default: text)")
    p.add_argument("--timeline", default=None, metavar="PATH.png",
                   help="also write the timeline of live bytes by category (default: none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api.step import check_step_args, run_profile_step
    from ..validation import check_format, check_output_file
    from ._common import build_model, resolve_model

    fmt = check_format(args.format)
    if args.timeline is not None:
        check_output_file(args.timeline, suffix=".png", what="--timeline")
    model, name, shape = resolve_model(args.model, args.input_shape)
    checked = check_step_args(args.batch_size, shape, args.optimizer, args.dtype, args.device, args.estimate)
    prof = run_profile_step(build_model(model), checked, name=name)
    print(prof.render(fmt), end="")
    if args.timeline is not None:
        prof.plot(args.timeline)
        print(f"wrote {args.timeline}", file=sys.stderr)
    return 0
