"""`memprof fit MODEL --memory 16GiB`: the largest batch size whose estimated step fits."""

from __future__ import annotations

import argparse

from ..vocabulary import DTYPE_NAMES

#: what `memprof fit` prints
FORMATS = ("text", "json")


#: one line for ``memprof --help`` (read without building this verb's parser)
HELP = ("largest batch size whose estimated training-step peak fits a memory budget")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_model_option, add_step_options, model_help

    p = sub.add_parser(
        "fit",
        help=HELP,
        description="Search over estimates (FakeTensorMode, nothing allocated) for the largest "
        "batch size whose step fits --memory. On the CPU the figure fitted is the estimated "
        "allocator peak (tensors and kernel scratch); with --device cuda it is the predicted "
        "max_memory_reserved of the caching-allocator model (not yet checked on a GPU; the CUDA "
        "context and cuDNN workspaces are not modelled: leave headroom for them). The search starts "
        "at the smallest batch the model accepts; a budget below what it needs is an error (exit 2).",
    )
    p.add_argument("model", help=model_help())
    add_model_option(p)
    add_step_options(p)
    p.add_argument("--memory", required=True,
                   help="the budget: 16GiB, 16GB (decimal), 512MiB or bytes, e.g. 17179869184 (required)")
    p.add_argument("--input-shape", default=None,
                   help="one sample's shape, e.g. 3,32,32 (default: the registered model's)")
    p.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPE_NAMES)} (default: float32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--expandable-segments", action="store_true",
                   help="with --device cuda, model PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (default: off)")
    p.add_argument("--format", default="text", help=f"{', '.join(FORMATS)} (default: text)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..validation import check_format, parse_memory

    fmt = check_format(args.format, FORMATS)  # checks that need no torch first (NOTE [ Starting without torch ])
    budget = parse_memory(args.memory)
    from ._common import build_model, user_model_and_step

    model, name, shape, step, options = user_model_and_step(args)
    from ..api.step import fit_batch

    found = fit_batch(build_model(model, options), budget, shape, dtype=args.dtype, device=args.device, name=name,
                      expandable_segments=args.expandable_segments, **step)
    print(found.render(fmt), end="")
    return 0
