"""`memprof compare`: a model family's memory-saving strategies side by side, a table and a scatter plot."""

from __future__ import annotations

import argparse
import sys

from ..vocabulary import (
    COMPARE_FAMILIES,
    COMPARE_FIXED_OPTIONS,
    COMPARE_REFERENCES,
    DTYPE_NAMES,
    FORMATS,
    MODEL_OPTIONS,
    Mode,
)

#: the flag that selects each mode
_FLAG = {Mode.ESTIMATED: "estimate", Mode.MEASURED: "measure"}


#: one line for ``memprof --help`` (read without building this verb's parser)
HELP = ("memory-saving strategies side by side (VGG-19, or --family vit): activation peak, step peak, step time, "
        "parameters")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help=HELP,
        description="Profile every strategy (plain autograd, checkpointing per stage or every sqrt(n) layers, "
        "the reversible Rev-VGG, the invertible i-Rev-VGG, and save_on_cpu offloading on a GPU; with --family vit "
        "the same for ViT, checkpointed per block, and the reversible Rev-ViT) and time "
        "their training steps side by side in one run. Prints the table; writes OUT/compare.md and "
        "OUT/compare.png (memory against step time).",
    )
    p.add_argument("--family", default="vgg", choices=list(COMPARE_FAMILIES),
                   help="vgg: VGG-19 plain/checkpointed, Rev-VGG, i-Rev-VGG; vit: ViT plain/checkpointed per "
                   "block/every sqrt(n), Rev-ViT (default: vgg)")
    p.add_argument("--strategies", default=None,
                   help=f"comma-separated, from {', '.join(COMPARE_FAMILIES['vgg'])} (vgg) or "
                   f"{', '.join(COMPARE_FAMILIES['vit'])} (vit); plain is always added as the "
                   "reference (default: all that run here; offload needs --measure on cuda)")
    listing = "; ".join(f"{family}: " + (", ".join(f"{k}={v}" for k, v in _options(family).items()) or "none")
                        for family in COMPARE_FAMILIES)
    p.add_argument("--model-option", action="append", default=None, metavar="NAME=VALUE",
                   help="an option of every strategy's model, repeatable, e.g. --family vit --model-option depth=6 "
                   f"(options and defaults: {listing}) (default: the models' own)")
    p.add_argument("--batch-size", default="32", help="samples per step (default: 32)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--estimate", dest="mode", action="store_const", const=Mode.ESTIMATED.value,
                       help="estimate memory under FakeTensorMode (the default)")
    group.add_argument("--measure", dest="mode", action="store_const", const=Mode.MEASURED.value,
                       help="measure memory at the allocator in a real step (default: off)")
    p.add_argument("--repeats", default="5", help="timing rounds, each one step per strategy (default: 5)")
    p.add_argument("--no-time", dest="timing", action="store_false",
                   help="skip the step times: memory only, no plot (default: times measured)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPE_NAMES)} (default: float32)")
    p.add_argument("--optimizer", default="sgd", help="sgd (momentum 0.9) or adam (default: sgd)")
    p.add_argument("--out", default=None,
                   help="directory for compare.md and compare.png (default: none, print only)")
    p.add_argument("--format", default="text", help=f"printed table: {', '.join(FORMATS)} (default: text)")
    p.set_defaults(func=run, mode=Mode.ESTIMATED.value)


def _options(family: str) -> dict[str, object]:
    """The model options a comparison of ``family`` takes: its reference model's, less the fixed ones."""
    accepted = MODEL_OPTIONS[COMPARE_REFERENCES[family]]
    return {k: v for k, v in accepted.items() if k not in COMPARE_FIXED_OPTIONS}


def run(args: argparse.Namespace) -> int:
    from ..validation import check_format, check_output_dir, parse_model_options
    from ._common import check_without_torch

    fmt = check_format(args.format)  # before torch is imported (NOTE [ Starting without torch ])
    reference = COMPARE_REFERENCES[args.family]
    options = parse_model_options(args.model_option, reference, _options(args.family))
    check_without_torch(args)
    from ..api.compare import check_compare_args, run_comparison
    from ..reports.compare import write_compare_files

    checked = check_compare_args(args.strategies, args.batch_size, args.mode, args.device, args.dtype,
                                 args.optimizer, args.repeats, args.timing, args.family, options)
    out = check_output_dir(args.out) if args.out is not None else None
    result = run_comparison(checked, progress=None)
    sys.stdout.write(result.render(fmt))
    if out is not None:
        family = "" if checked.family == "vgg" else f" --family {checked.family}"
        command = (f"memprof compare{family} --strategies {','.join(checked.strategies)} "
                   f"--batch-size {checked.batch_size} "
                   f"--{_FLAG[checked.mode]} --repeats {checked.repeats}{'' if args.timing else ' --no-time'} "
                   f"--device {args.device} --dtype {args.dtype} --optimizer {args.optimizer}"
                   + "".join(f" --model-option {spec}" for spec in args.model_option or ()))
        for path in write_compare_files(result, out, command):
            print(f"wrote {path}", file=sys.stderr)
    return 0
