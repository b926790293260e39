"""`memprof fit MODEL --memory 16GiB`: the largest batch size whose estimated step fits."""

from __future__ import annotations

import argparse

from ..units import DTYPES


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_step_options, model_help

    p = sub.add_parser(
        "fit",
        help="largest batch size whose estimated training-step peak fits a memory budget",
        description="Exponential then binary search over estimates (FakeTensorMode, nothing "
        "allocated) for the largest batch size whose step peak fits --memory. With --device cuda "
        "the CUDA caching allocator's rounding is applied; the CUDA context and cuDNN/cuBLAS "
        "workspaces are not modelled: leave headroom for them.",
    )
    p.add_argument("model", help=model_help())
    add_step_options(p)
    p.add_argument("--memory", required=True,
                   help="the budget: 16GiB, 16GB (decimal), 512MiB or bytes, e.g. 17179869184 (required)")
    p.add_argument("--input-shape", default=None,
                   help="one sample's shape, e.g. 3,32,32 (default: the registered model's)")
    p.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPES)} (default: float32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--format", default="text", help="text or json (default: text)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..aggregation.step import check_step_args, fit_batch_size
    from ..errors import UsageError, check_choice
    from ..units import format_bytes, parse_bytes
    from .profile import build_model, resolve_model

    check_choice("format", args.format, ("text", "json"))
    try:
        budget = parse_bytes(args.memory)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from ._common import step_options

    step = step_options(args)
    model, name, shape = resolve_model(args.model, args.input_shape, inputs_given=step["inputs"] is not None)
    check_step_args(1, shape, step["optimizer"], args.dtype, args.device, True, inputs=step["inputs"],
                    autocast=step["autocast"], accumulation_steps=step["accumulation_steps"])
    batch, prof = fit_batch_size(build_model(model), budget, shape, dtype=args.dtype, device=args.device, name=name,
                                 **step)
    if args.format == "json":
        print(json.dumps({
            "model": name, "memory_bytes": budget, "device": args.device, "dtype": args.dtype,
            "optimizer": args.optimizer, "batch_size": batch,
            "peak_bytes": prof.peak_bytes if prof else None,
            "activation_peak_bytes": prof.activation_peak_bytes if prof else None,
        }, indent=2))
        return 0
    if prof is None:
        print(f"{name}: not even batch size 1 fits in {format_bytes(budget, 'GiB', 3)} ({budget} bytes)")
        return 0
    print(f"{name}: batch size {batch} fits in {format_bytes(budget, 'GiB', 3)} ({budget} bytes) on {args.device}, "
          f"{args.dtype}, {args.optimizer}")
    print(f"estimated peak at batch {batch}: {format_bytes(prof.peak_bytes, 'MiB')} "
          f"(activation peak {format_bytes(prof.activation_peak_bytes, 'MiB')})")
    for n in prof.notes:
        print(f"note: {n}")
    return 0
