"""`memprof profile MODEL`: the memory of one training step, measured or estimated."""

from __future__ import annotations

import argparse
import sys

from ..vocabulary import DTYPE_NAMES, FORMATS

#: one line for ``memprof --help`` (read without building this verb's parser)
HELP = ("memory of one training step: allocator peak, breakdown at the peak, module peaks")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_model_option, add_step_options, model_help

    p = sub.add_parser(
        "profile",
        help=HELP,
        description="Run one steady-state training step (forward, loss, backward, optimizer step, "
        "after one warm-up step) and report its peak at the allocator, the live bytes at the peak "
        "by category, the activation peak, per-module forward/backward peaks and the step time. "
        "With --estimate nothing is allocated (FakeTensorMode).",
    )
    p.add_argument("model", help=model_help())
    add_model_option(p)
    add_step_options(p)
    p.add_argument("--batch-size", default="32", help="samples per step (default: 32)")
    p.add_argument("--input-shape", default=None,
                   help="one sample's shape, e.g. 3,32,32 (default: the registered model's; "
                   "required for package.module:factory)")
    p.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPE_NAMES)} (default: float32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--estimate", action="store_true",
                   help="estimate under FakeTensorMode instead of measuring; for cuda applies the "
                   "caching-allocator model (default: off)")
    p.add_argument("--format", default="text", help=f"{', '.join(FORMATS)} (default: text)")
    p.add_argument("--top", default="10", metavar="N",
                   help="per-module section: the N modules with the largest peak, in model order; 0: all "
                   "(default: 10, so that a terminal shows the whole report; --format json lists every module)")
    p.add_argument("--depth", default=None, metavar="N",
                   help="per-module section: modules nested at most N deep (the model's children are depth 1) "
                   "(default: any depth)")
    p.add_argument("--timeline", default=None, metavar="PATH.png",
                   help="also write the timeline of live bytes by category (default: none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..validation import check_format, check_non_negative_int, check_output_file

    # the checks that need no torch first: a typo is answered at once (NOTE [ Starting without torch ])
    fmt = check_format(args.format)
    top = check_non_negative_int("--top", args.top)
    depth = None if args.depth is None else check_non_negative_int("--depth", args.depth)
    if args.timeline is not None:
        check_output_file(args.timeline, suffix=".png", what="--timeline")
    from ._common import build_model, user_model_and_step

    model, name, shape, step, options = user_model_and_step(args)
    from ..api.step import check_step_args, run_profile_step

    checked = check_step_args(args.batch_size, shape, dtype=args.dtype, device=args.device, estimate=args.estimate,
                              **step)
    prof = run_profile_step(build_model(model, options), checked, name=name)
    print(prof.render(fmt, depth=depth, top=top), end="")
    if args.timeline is not None:
        prof.plot(args.timeline)
        print(f"wrote {args.timeline}", file=sys.stderr)
    return 0
