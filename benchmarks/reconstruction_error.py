"""How the rebuilt input of a reversible sequence drifts from the real one as depth grows.

Runs x -> forward through the first k couplings -> inverse, and prints the relative error
||x_rebuilt - x|| / ||x|| for k = 1, 4, 16, 64, in float32, under CPU autocast to bfloat16
(weights and the additive updates stay float32), and with the whole model in bfloat16.

    python benchmarks/reconstruction_error.py [--channels 16] [--size 8] [--batch 8]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from tabulate import tabulate
from torch import nn

from memprof.reversible import AdditiveCoupling, ReversibleSequence


def residual(c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
    )


def relative_errors(depths: list[int], channels: int, size: int, batch: int, mode: str) -> list[float]:
    torch.manual_seed(0)
    half = channels // 2
    seq = ReversibleSequence([AdditiveCoupling(residual(half), residual(half)) for _ in range(max(depths))]).eval()
    x = torch.randn(batch, channels, size, size)
    ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    if mode == "bfloat16 (autocast)":
        ctx = torch.autocast("cpu", dtype=torch.bfloat16)
    elif mode == "bfloat16 (model)":
        seq, x = seq.to(torch.bfloat16), x.to(torch.bfloat16)
    errors = []
    with torch.no_grad(), ctx:
        for k in depths:
            part = seq.blocks[:k]
            y = x
            for block in part:
                y = block(y)
            for block in reversed(part):
                y = block.inverse(y)
            errors.append(((y.float() - x.float()).norm() / x.float().norm()).item())
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=16, help="channels (default: 16)")
    parser.add_argument("--size", type=int, default=8, help="height and width (default: 8)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    args = parser.parse_args()
    depths = [1, 4, 16, 64]
    rows = []
    for mode in ("float32", "bfloat16 (autocast)", "bfloat16 (model)"):
        errs = relative_errors(depths, args.channels, args.size, args.batch, mode)
        rows.append([mode, *(f"{e:.2e}" for e in errs)])
    print(f"Relative reconstruction error ||inverse(forward(x)) - x|| / ||x||, "
          f"batch {args.batch}, {args.channels} channels, {args.size}x{args.size}, eval mode")
    print(tabulate(rows, headers=["precision", *(f"{d} blocks" for d in depths)], tablefmt="github"))


if __name__ == "__main__":
    main()
