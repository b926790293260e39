"""How much slower is a measured training step than a plain one? (issue 4: at most 1.15x)

For each model, plain steps and measured steps (storage tracker + allocator tracker) alternate
on the same model, optimizer and batch, so that machine load hits both alike; the fastest of
each kind are compared (on a shared machine the minimum is the least disturbed figure), on one
intra-op thread by default (two OpenMP threads on a busy 2-core machine swing tenfold).
Two ratios are printed:

- step: wall time of the instrumented step itself (hooks firing, dispatch mode, profiler
  recording) over a plain step: what the issue's 1.15x bound is about;
- step ratio (CPU time): the same in CPU time of the process, which other processes' load
  disturbs much less than wall time (the figure to trust on a shared machine);
- total: the whole ``measure_step`` call (installing and removing hooks, starting and stopping
  the profiler, replaying its memory events) over a plain step: the fixed cost of one profile.

Usage: python benchmarks/profiler_overhead.py [--models vgg19,revvgg] [--batch-sizes 16,128] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from memprof.recording.runner import make_optimizer, measure_step, run_step, targets_for, warm_up
from memprof.models import get_model, get_model_info
from memprof.recording.allocations import CpuAllocatorTracker


def measure_model(name: str, batch_size: int, repeats: int) -> tuple[float, float, float, float, float]:
    """Fastest plain step, instrumented step and whole measure_step call (wall), and the plain
    and instrumented steps in CPU time of the process, in seconds."""
    torch.manual_seed(0)
    model = get_model(name).train()
    x = torch.randn(batch_size, *get_model_info(name).input_shape)
    opt = make_optimizer("sgd", model.parameters())
    targets = warm_up(model, opt, x, targets_for(batch_size, torch.device("cpu"), 0))
    # one instrumented step untimed: the profiler's first start costs seconds, once per process
    measure_step(model, opt, x, targets, allocator=CpuAllocatorTracker())
    opt.zero_grad(set_to_none=True)
    plain, step, total, plain_cpu, step_cpu = [], [], [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        run_step(model, opt, x, targets)
        plain.append(time.perf_counter() - t0)
        plain_cpu.append(time.process_time() - c0)
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        rec = measure_step(model, opt, x, targets, allocator=CpuAllocatorTracker())
        rec.tracker.timeline()  # the post-processing a profile does
        total.append(time.perf_counter() - t0)
        step.append(rec.step_time_s or 0.0)
        step_cpu.append(rec.step_cpu_time_s or 0.0)
        opt.zero_grad(set_to_none=True)
    return min(plain), min(step), min(total), min(plain_cpu), min(step_cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vgg19,revvgg,irevvgg", help="comma-separated (default: vgg19,revvgg,irevvgg)")
    ap.add_argument("--batch-sizes", default="16,128",
                    help="comma-separated (default: 16,128; the overhead is per op, so its share falls with the batch)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating plain/measured pairs (default: 3)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, SGD, fastest of {args.repeats} alternating pairs; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<10} {'batch':>6} {'plain s':>9} {'measured step s':>16} {'step ratio':>11} {'total s':>9} "
          f"{'total ratio':>12} {'step ratio (CPU time)':>22}")
    for batch_size in map(int, args.batch_sizes.split(",")):
        for name in args.models.split(","):
            plain, step, total, plain_cpu, step_cpu = measure_model(name, batch_size, args.repeats)
            print(f"{name:<10} {batch_size:>6} {plain:>9.3f} {step:>16.3f} {step / plain:>11.3f} {total:>9.3f} "
                  f"{total / plain:>12.3f} {step_cpu / plain_cpu:>22.3f}", flush=True)


if __name__ == "__main__":
    main()
