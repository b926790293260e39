"""`memprof fit MODEL --memory 16GiB`: the largest batch size whose estimated step fits."""

from __future__ import annotations

import argparse

from ..vocabulary import DTYPES

#: what `memprof fit` prints
FORMATS = ("text", "json")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import model_help

    p = sub.add_parser(
        "fit",
        help="largest batch size whose estimated training-step peak fits a memory budget",
        description="Search over estimates (FakeTensorMode, nothing allocated) for the largest "
        "batch size whose step fits --memory. On the CPU the figure fitted is the estimated "
        "allocator peak (tensors and kernel scratch); with --device cuda it is the predicted "
        "max_memory_reserved of the caching-allocator model (not yet checked on a GPU; the CUDA "
        "context and cuDNN workspaces are not modelled: leave headroom for them). A budget below "
        "what batch 1 needs is an error (exit 2).",
    )
    p.add_argument("model", help=model_help())
    p.add_argument("--memory", required=True,
                   help="the budget: 16GiB, 16GB (decimal), 512MiB or bytes, e.g. 17179869184 (required)")
    p.add_argument("--input-shape", default=None,
                   help="one sample's shape, e.g. 3,32,32 (default: the registered model's)")
    p.add_argument("--optimizer", default="sgd", help="sgd or adam (default: sgd)")
    p.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPES)} (default: float32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--expandable-segments", action="store_true",
                   help="with --device cuda, model PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (default: off)")
    p.add_argument("--format", default="text", help=f"{', '.join(FORMATS)} (default: text)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api.step import fit_batch_size
    from ..rendering.fit import BatchFit
    from ..validation import check_format, parse_memory
    from ._common import build_model, resolve_model

    fmt = check_format(args.format, FORMATS)
    budget = parse_memory(args.memory)
    model, name, shape = resolve_model(args.model, args.input_shape)
    batch, prof = fit_batch_size(build_model(model), budget, shape, optimizer=args.optimizer, dtype=args.dtype,
                                 device=args.device, name=name, expandable_segments=args.expandable_segments)
    print(BatchFit(name, budget, args.device, args.dtype, args.optimizer, batch, prof).render(fmt), end="")
    return 0
