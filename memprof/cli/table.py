"""`memprof table MODEL`: the per-layer table (the deck's columns beside what autograd saves)."""

from __future__ import annotations

import argparse

from ..vocabulary import DTYPE_NAMES, FORMATS


#: one line for ``memprof --help`` (read without building this verb's parser)
HELP = ("per-layer table: shapes, #params, #activations (deck convention) and the bytes "
        "autograd saves per layer")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import model_help

    p = sub.add_parser(
        "table",
        help=HELP,
        description="One row per layer: the deck's columns (input, layer, channels, kernel, stride, "
        "output, #params, #activations) beside the bytes autograd really saves for each row and "
        "the gradient bytes; totals in the deck's form; for vgg19 and revvgg the deck's table "
        "(labelled seed) with every difference and its cause.",
    )
    p.add_argument("model", help=model_help())
    p.add_argument("--depth", default=None,
                   help="row granularity, as in torchinfo: modules at this depth and leaves above it "
                   "(default: the registered model's, which reproduces the deck's rows; every leaf "
                   "for package.module:factory)")
    p.add_argument("--batch-size", default="128", help="batch size of the recorded forward (default: 128)")
    p.add_argument("--dtype", default="float32",
                   help=f"parameter/activation dtype: {', '.join(DTYPE_NAMES)} (default: float32)")
    p.add_argument("--format", default="text", help=f"output format: {', '.join(FORMATS)} (default: text)")
    p.add_argument("--out", default=None, help="write to this file, atomically (default: stdout)")
    p.add_argument("--input-shape", default=None,
                   help="one sample's shape C,H,W without the batch (default: the registered "
                   "model's, 3,32,32; required for package.module:factory)")
    p.add_argument("--device", default="meta",
                   help="where the forward runs: meta (exact shapes and storages, no arithmetic), "
                   "cpu or cuda (default: meta)")
    p.add_argument("--all-rows", action="store_true",
                   help="show every row: in-place ReLUs unfolded, empty rows kept (default: off)")
    p.add_argument("--seed-table", action="store_true",
                   help="also print the deck's table as published (text/markdown; default: off)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api.table import check_table_args, run_layer_table
    from ..validation import check_format, check_output_file
    from ._common import load_model, write_output

    # Every check before any work; a package.module:factory is built only once everything
    # else is known to be valid, and the table is then made from the checked arguments.
    fmt = check_format(args.format)
    if args.out is not None:
        check_output_file(args.out, what="--out")
    checked = check_table_args(None if ":" in args.model else args.model, args.input_shape, args.batch_size,
                               args.dtype, args.depth, args.device)
    model = load_model(args.model)
    table = run_layer_table(checked, None if isinstance(model, str) else model, all_rows=args.all_rows)
    write_output(table.render(fmt, include_seed_table=args.seed_table), args.out)
    return 0
