"""Peak memory and step time of a reversible sequence against its plain twin, by depth.

For 4, 16 and 64 couplings (additive, or affine with ``--coupling affine``; F and G: conv3x3 +
BatchNorm + ReLU, twice) it measures, side by side in one run:
- the peak of a forward+backward at the allocator, above the bytes live before the step
  (CPU: the profiler's memory events replayed; CUDA: torch.cuda.max_memory_allocated);
- the median step time over ``--repeats`` interleaved runs (CPU time of the process on CPU,
  wall-clock on CUDA), and the ratio reversible / plain, median and range over the runs.

    OMP_NUM_THREADS=1 python benchmarks/reversible_depth.py [--device cpu|cuda] [--coupling additive|affine]
        [--channels 64] [--size 16] [--batch 8] [--depths 4,16,64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from tabulate import tabulate
from torch import nn

from memprof.recording.allocations import make_allocator_tracker
from memprof.reversible import AdditiveCoupling, AffineCoupling, ReversibleSequence, set_reversible
from memprof.units import format_bytes


def residual(c: int, out: int | None = None) -> nn.Sequential:
    out = out or c
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
    )


def coupling(kind: str, half: int) -> nn.Module:
    if kind == "affine":  # F and G return (log-scale, shift): twice the half's channels
        return AffineCoupling(residual(half, 2 * half), residual(half, 2 * half))
    return AdditiveCoupling(residual(half), residual(half))


def step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=False)  # gradients stay allocated: only activations vary
    model(x).square().mean().backward()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """CPU time of this process on CPU (one thread), wall-clock on CUDA."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def measure(depth: int, args: argparse.Namespace, device: torch.device) -> list[object]:
    torch.manual_seed(0)
    half = args.channels // 2
    rev = ReversibleSequence([coupling(args.coupling, half) for _ in range(depth)]).to(device)
    plain = set_reversible(copy.deepcopy(rev), False)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device, requires_grad=True)
    models = {"plain": plain, "reversible": rev}
    peaks: dict[str, int] = {}
    times: dict[str, list[float]] = {k: [] for k in models}
    for name, model in models.items():
        step(model, x)  # warm-up; also allocates .grad so peaks compare activations only
        tracker = make_allocator_tracker(device)
        with tracker.track():
            step(model, x)
        peaks[name] = tracker.result.peak_increase
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both
        for name, model in models.items():
            sync(device)
            t0 = clock(device)
            step(model, x)
            sync(device)
            times[name].append(clock(device) - t0)
    t_plain, t_rev = statistics.median(times["plain"]), statistics.median(times["reversible"])
    ratios = [r / p for r, p in zip(times["reversible"], times["plain"])]
    return [
        depth,
        format_bytes(peaks["plain"], "MiB"),
        format_bytes(peaks["reversible"], "MiB"),
        f"{peaks['reversible'] / peaks['plain']:.3f}",
        f"{t_plain * 1e3:.1f}",
        f"{t_rev * 1e3:.1f}",
        f"{statistics.median(ratios):.2f}",
        f"{min(ratios):.2f}-{max(ratios):.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--coupling", default="additive", choices=["additive", "affine"], help="coupling kind (default: additive)")
    parser.add_argument("--channels", type=int, default=64, help="channels, split in halves (default: 64)")
    parser.add_argument("--size", type=int, default=16, help="height and width (default: 16)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model (default: 5)")
    parser.add_argument("--depths", default="4,16,64", help="coupling counts (default: 4,16,64)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    rows = [measure(int(d), args, device) for d in args.depths.split(",")]
    print(
        f"Forward+backward of {args.coupling} couplings on {device}, one thread: batch {args.batch}, {args.channels} channels, "
        f"{args.size}x{args.size}; peak = allocator peak above the bytes live before the step "
        f"(parameters, gradients and input excluded), MiB = 2^20 bytes; time = median of {args.repeats} interleaved steps"
    )
    print(
        tabulate(
            rows,
            headers=["couplings", "plain peak", "reversible peak", "peak ratio", "plain ms", "reversible ms", "time rev/plain", "range"],
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
