"""`memprof sweep`: memory of several models over batch sizes, the savings, a CSV and a plot."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..vocabulary import DTYPE_NAMES, FORMATS, SWEEP_BATCH_SIZES, SWEEP_MODELS, Mode

#: the flag that selects each mode
_FLAG = {Mode.ESTIMATED: "estimate", Mode.MEASURED: "measure"}


#: one line for ``memprof --help`` (read without building this verb's parser)
HELP = ("memory of models over batch sizes and the savings against the first; writes sweep.csv and sweep.png")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_model_option, add_step_options

    models = ",".join(SWEEP_MODELS)
    sizes = ",".join(map(str, SWEEP_BATCH_SIZES))
    p = sub.add_parser(
        "sweep",
        help=HELP,
        description="For each model and batch size: the deck's activation memory, the bytes autograd saves, "
        "a training step's peak and activation peak (estimated by default, nothing allocated), and the "
        "saving against the first model. Prints a table; writes OUT/sweep.csv and OUT/sweep.png.",
    )
    p.add_argument("--models", default=models,
                   help=f"comma-separated registered models or package.module:factory (a callable returning an "
                   f"nn.Module; needs --input-shape or --input), the first is the reference (default: {models})")
    add_model_option(p, "every registered model's")
    p.add_argument("--input-shape", default=None,
                   help="one float sample's shape for every model, e.g. 3,32,32 (default: a registered model's own)")
    p.add_argument("--batch-sizes", default=sizes,
                   help=f"comma-separated batch sizes; '...' continues a progression, e.g. 1,2,4,...,1024 "
                   f"(default: {sizes})")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--estimate", dest="mode", action="store_const", const=Mode.ESTIMATED.value,
                       help="estimate each step under FakeTensorMode, nothing allocated (the default)")
    group.add_argument("--measure", dest="mode", action="store_const", const=Mode.MEASURED.value,
                       help="run each step for real; a size that runs out of memory becomes a row marked "
                       "'out of memory' (default: off)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPE_NAMES)} (default: float32)")
    add_step_options(p)
    p.add_argument("--out", default=".", help="directory for sweep.csv and sweep.png (default: .)")
    p.add_argument("--format", default="text", help=f"printed table: {', '.join(FORMATS)} (default: text)")
    p.set_defaults(func=run, mode=Mode.ESTIMATED.value)


def _models(spec: str) -> Any:
    """The --models value as is (registered names), or name -> module for package.module:factory specs."""
    from ._common import load_model

    parts = [p.strip() for p in spec.split(",")]
    if not any(":" in p for p in parts):
        return spec
    return {p: load_model(p) for p in parts if p}


def run(args: argparse.Namespace) -> int:
    from ..validation import check_format, check_output_dir
    from ._common import check_without_torch, shared_model_options

    fmt = check_format(args.format)  # before torch is imported (NOTE [ Starting without torch ])
    check_without_torch(args)
    options = shared_model_options(args.model_option, args.models)
    from ..api.sweep import check_sweep_args, run_sweep
    from ..reports.sweep import write_sweep_files
    from ._common import step_options

    step = step_options(args)
    checked = check_sweep_args(_models(args.models), args.batch_sizes, args.mode, args.device, args.dtype,
                               model_options=options, input_shape=args.input_shape, **step)
    out = check_output_dir(args.out)
    result = run_sweep(checked, progress=None)
    sys.stdout.write(result.render(fmt))
    extra = "".join(f" --input {s}" for s in args.input or ())
    extra += f" --input-shape {args.input_shape}" if args.input_shape else ""
    extra += f" --autocast {args.autocast}" if args.autocast else ""
    extra += f" --accumulation-steps {args.accumulation_steps}" if str(args.accumulation_steps) != "1" else ""
    command = (f"memprof sweep --models {','.join(checked.models)} "
               f"--batch-sizes {','.join(map(str, checked.batch_sizes))} --{_FLAG[checked.mode]} --device {args.device} "
               f"--dtype {args.dtype} --optimizer {args.optimizer}{extra}"
               + "".join(f" --model-option {spec}" for spec in args.model_option or ()))
    for path in write_sweep_files(result, out, command):
        print(f"wrote {path}", file=sys.stderr)
    return 0
