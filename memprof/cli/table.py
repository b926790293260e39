"""`memprof table MODEL`: the per-layer table (the deck's columns beside what autograd saves)."""

from __future__ import annotations

import argparse
from typing import Any

from ..cache import cache_dir, cache_enabled, cache_key, read_cached, write_cached
from ..vocabulary import BUILTIN_MODELS, DTYPE_NAMES, FORMATS, TABLE_DEVICES

#: one line for ``memprof --help`` (read without building this verb's parser)
HELP = ("per-layer table: shapes, #params, #activations (deck convention) and the bytes "
        "autograd saves per layer")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_model_option, model_help

    p = sub.add_parser(
        "table",
        help=HELP,
        description="One row per layer: the deck's columns (input, layer, channels, kernel, stride, "
        "output, #params, #activations) beside the bytes autograd really saves for each row and "
        "the gradient bytes; totals in the deck's form; for vgg19 and revvgg the deck's table "
        "(labelled seed) with every difference and its cause. The table of a registered model on "
        f"the meta device is cached in {cache_dir()} ($MEMPROF_CACHE_DIR, else $XDG_CACHE_HOME/memprof, "
        "else ~/.cache/memprof), keyed by the arguments, the memprof modules it used and the torch version, "
        "so a repeated table starts without importing torch; the tables of the built-in models at their "
        "default arguments ship with memprof, so even the first one does.",
    )
    p.add_argument("model", help=model_help())
    add_model_option(p)
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
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the result cache (nor read the shipped tables); MEMPROF_NO_CACHE=1 "
                   "does the same (default: off)")
    p.set_defaults(func=run)


def _resolve_builtin(args: argparse.Namespace, fmt: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments of a built-in model's table, resolved and checked without torch; None for other models.

    These are the checks of ``check_table_args`` that need no torch, so that a bad value is
    answered at once with the same line; the result keys the cache (NOTE [ The result cache ]
    in :mod:`memprof.cache`).
    """
    from ..validation import (
        check_choice,
        check_non_negative_int,
        check_positive_int,
        parse_input_shape,
    )
    from ._common import load_model

    if ":" in args.model:
        return None
    load_model(args.model)  # an unknown name: one line listing the known ones
    if args.model not in BUILTIN_MODELS:  # registered at run time: its builder may change, never cached
        return None
    return {
        "model": args.model,
        "model_options": sorted(options.items()),
        "batch_size": check_positive_int("batch size", args.batch_size),
        "dtype": check_choice("dtype", args.dtype, DTYPE_NAMES),
        "depth": None if args.depth is None else check_non_negative_int("depth", args.depth),
        "input_shape": None if args.input_shape is None else list(parse_input_shape(args.input_shape)),
        "device": check_choice("device", args.device, TABLE_DEVICES),
        "format": fmt,
        "all_rows": bool(args.all_rows),
        "seed_table": bool(args.seed_table),
    }


def run(args: argparse.Namespace) -> int:
    from ..validation import check_format, check_output_file
    from ._common import model_options, write_output

    # Every check before any work; a package.module:factory is built only once everything
    # else is known to be valid, and the table is then made from the checked arguments.
    fmt = check_format(args.format)
    if args.out is not None:
        check_output_file(args.out, what="--out")
    options = model_options(args)
    resolved = _resolve_builtin(args, fmt, options)
    cacheable = resolved is not None and resolved["device"] == "meta" and cache_enabled(args.no_cache)
    key = cache_key("table", resolved) if cacheable else None
    text = None if key is None else read_cached(key)
    if text is None:  # not cached: record the forward (imports torch)
        from ..api.table import check_table_args, run_layer_table
        from ._common import load_model

        checked = check_table_args(None if ":" in args.model else args.model, args.input_shape, args.batch_size,
                                   args.dtype, args.depth, args.device, options)
        model = load_model(args.model)
        table = run_layer_table(checked, None if isinstance(model, str) else model, all_rows=args.all_rows)
        text = table.render(fmt, include_seed_table=args.seed_table)
        if key is not None:
            write_cached(key, text)
    write_output(text, args.out)
    return 0
