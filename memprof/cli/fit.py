"""`memprof fit MODEL --memory 16GiB`: the largest batch size whose estimated step fits."""

from __future__ import annotations

import argparse

from ..units import DTYPES


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import model_help

    p = sub.add_parser(
        "fit",
        help="largest batch size whose estimated training-step peak fits a memory budget",
        description="Search over estimates (FakeTensorMode, nothing allocated) for the largest "
        "batch size whose step fits --memory. On the CPU the figure fitted is the estimated "
        "allocator peak (tensors and kernel scratch); with --device cuda it is the predicted "
        "max_memory_reserved of the caching-allocator model (not yet checked on a GPU; the CUDA "
        "context and cuDNN workspaces are not modelled: leave headroom for them).",
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
    p.add_argument("--format", default="text", help="text or json (default: text)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..aggregation.step import check_step_args, fit_batch_size, fitted_figure
    from ..errors import UsageError, check_choice
    from ..units import format_bytes, parse_bytes
    from .profile import build_model, resolve_model

    check_choice("format", args.format, ("text", "json"))
    try:
        budget = parse_bytes(args.memory)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    model, name, shape = resolve_model(args.model, args.input_shape)
    check_step_args(1, shape, args.optimizer, args.dtype, args.device, True)
    batch, prof = fit_batch_size(build_model(model), budget, shape, optimizer=args.optimizer, dtype=args.dtype,
                                 device=args.device, name=name, expandable_segments=args.expandable_segments)
    figure, fitted = fitted_figure(prof)
    if args.format == "json":
        print(json.dumps({
            "model": name, "memory_bytes": budget, "device": args.device, "dtype": args.dtype,
            "optimizer": args.optimizer, "batch_size": batch, "fitted_figure": figure, "fitted_bytes": fitted,
            "unused_bytes": budget - fitted, "peak_bytes": prof.peak_bytes,
            "reserved_peak_bytes": prof.reserved_peak_bytes,
            "activation_peak_bytes": prof.activation_peak_bytes, "notes": prof.notes,
        }, indent=2))
        return 0
    print(f"{name}: batch size {batch} fits in {format_bytes(budget, 'GiB', 3)} ({budget} bytes) on {args.device}, "
          f"{args.dtype}, {args.optimizer}")
    print(f"fitted figure: {figure} at batch {batch}: {format_bytes(fitted, 'MiB')}; "
          f"unused budget {format_bytes(budget - fitted, 'MiB')} ({100 * (budget - fitted) / budget:.2f}%)")
    if prof.reserved_peak_bytes is not None:
        print(f"predicted max_memory_allocated {format_bytes(prof.peak_bytes, 'MiB')}, "
              f"max_memory_reserved {format_bytes(prof.reserved_peak_bytes, 'MiB')}")
    print(f"activation peak {format_bytes(prof.activation_peak_bytes, 'MiB')}")
    for n in prof.notes:
        print(f"note: {n}")
    return 0
