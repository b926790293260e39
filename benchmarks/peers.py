"""memprof's reversible engine against its peers, on one workload, side by side in one run.

The same additive-coupling network (F and G: conv3x3-BN-ReLU-conv3x3-BN, same weights) is
trained one step at a time
- plainly (ordinary autograd: memprof's ``reversible=False`` twin),
- with memprof (``ReversibleSequence``),
- with memcnn (``InvertibleModuleWrapper(AdditiveCoupling(F, G))`` per coupling), if installed,
- with revlib (``ReversibleSequential(F1, G1, F2, G2, ...)``), if installed.
For each it prints the allocator peak of one forward+backward above the bytes live before the
step (parameters and gradients already allocated) and the step time as a ratio to plain,
measured round by round (one step of each, in turn, per round), with the range over rounds.
Times are the process's CPU time on one thread (``torch.set_num_threads(1)``; wall-clock with
a synchronize on CUDA), which other processes on a shared machine disturb less than wall-clock
time; still expect noise and read the range.

memcnn and revlib are benchmark extras, never memprof dependencies:

    pip install --no-deps memcnn revlib      # both import torch only
    OMP_NUM_THREADS=1 python benchmarks/peers.py [--couplings 16] [--channels 64] [--size 16] [--batch 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from tabulate import tabulate
from torch import nn

from memprof.recording.allocations import make_allocator_tracker
from memprof.reversible import AdditiveCoupling, ReversibleSequence, set_reversible
from memprof.units import format_bytes


def branch(c: int) -> nn.Sequential:
    """conv3x3-BN-ReLU-conv3x3-BN: the issue's workload."""
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
    )


def build(couplings: int, channels: int, device: torch.device) -> dict[str, nn.Module]:
    """The same network for every library (deep copies of the same F and G)."""
    torch.manual_seed(0)
    half = channels // 2
    rev = ReversibleSequence([AdditiveCoupling(branch(half), branch(half)) for _ in range(couplings)]).to(device)
    models: dict[str, nn.Module] = {"plain": set_reversible(copy.deepcopy(rev), False), "memprof": rev}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import memcnn
        models["memcnn"] = nn.Sequential(
            *[
                memcnn.InvertibleModuleWrapper(
                    memcnn.AdditiveCoupling(Fm=copy.deepcopy(b.F), Gm=copy.deepcopy(b.G)),
                    keep_input=False,
                    keep_input_inverse=False,
                )
                for b in rev.blocks
            ]
        )
    except ImportError:
        print("memcnn is not installed (pip install --no-deps memcnn): left out")
    try:
        import revlib

        mods = [m for b in rev.blocks for m in (copy.deepcopy(b.F), copy.deepcopy(b.G))]
        models["revlib"] = revlib.ReversibleSequential(*mods, split_dim=1)
    except ImportError:
        print("revlib is not installed (pip install --no-deps revlib): left out")
    return models


def make_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        # a fresh input each step: memcnn frees the storage of its first block's input
        model(x.clone().requires_grad_()).square().mean().backward()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """CPU time of this process on CPU (one thread), wall-clock on CUDA."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def measure(couplings: int, args: argparse.Namespace, device: torch.device) -> list[list[object]]:
    models = build(couplings, args.channels, device)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    steps = {name: make_step(m, x) for name, m in models.items()}
    peaks: dict[str, int] = {}
    for name, step in steps.items():
        step()  # warm-up; also allocates .grad so the peak compares activations only
        tracker = make_allocator_tracker(device)
        with tracker.track():
            step()
        peaks[name] = tracker.result.peak_increase
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):  # interleaved: drift on a shared machine hits every library
        for name, step in steps.items():
            sync(device)
            t0 = clock(device)
            step()
            sync(device)
            times[name].append(clock(device) - t0)
    rows = []
    for name in steps:
        ratios = [t / p for t, p in zip(times[name], times["plain"])]
        rows.append(
            [
                name,
                couplings,
                format_bytes(peaks[name], "MiB"),
                f"{peaks[name] / peaks['plain']:.3f}",
                f"{statistics.median(times[name]) * 1e3:.0f}",
                f"{statistics.median(ratios):.2f}",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--couplings", default="16", help="comma-separated coupling counts (default: 16)")
    parser.add_argument("--channels", type=int, default=64, help="channels, split in halves (default: 64)")
    parser.add_argument("--size", type=int, default=16, help="height and width (default: 16)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, one step per library each (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [row for n in args.couplings.split(",") for row in measure(int(n), args, device)]
    print(
        f"One training step (forward+backward) on {device}, {args.threads} thread(s): batch {args.batch}, "
        f"{args.channels} channels, {args.size}x{args.size}, F and G conv-BN-ReLU-conv-BN. "
        f"Time = {'wall-clock' if device.type == 'cuda' else 'CPU time of the process'}. "
        "Peak = measured allocator peak above the bytes live before the step, MiB = 2^20 bytes. "
        f"Time ratio = step time / plain step time in the same round, median and range over {args.rounds} rounds."
    )
    print(
        tabulate(
            rows,
            headers=["library", "couplings", "peak", "peak / plain", "median ms", "time / plain", "range"],
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
