"""Rev-ViT against ViT: activation peak over depth, and Rev-ViT's step time against its twin.

Side by side in one run (issue 15's measured targets):
- the activation peak of one training step (SGD with momentum, float32) of ``vit`` and
  ``revvit`` at depths 6, 12, 24 and 48, estimated under FakeTensorMode (deterministic), and
  their ratio: Rev-ViT's is flat in depth, and at depth 12, batch 128 the target is <= 0.20;
- the CPU time of one training step of ``vit``, ``revvit`` and ``revvit`` with
  ``reversible=False`` (the same weights), one intra-op thread, ``--repeats`` interleaved
  rounds after a warm-up: Rev-ViT / twin (target <= 1.35) with the range over rounds.

    OMP_NUM_THREADS=1 python benchmarks/revvit_depth.py [--batch-size 128] [--timing-batch-size 32]
        [--repeats 3] [--depths 6,12,24,48] [--plot revvit_depth.png] [--no-memory] [--no-time]

The twin timing at the issue's setting (depth 12, batch 128), timing only:

    OMP_NUM_THREADS=1 python benchmarks/revvit_depth.py --no-memory --timing-batch-size 128 --repeats 3
"""

from __future__ import annotations

import argparse

from tabulate import tabulate

from memprof.aggregation.transformers import ACTIVATION_TARGET, TIME_TARGET, TWIN
from memprof.api.transformers import depth_sweep, time_twins
from memprof.recording.threads import one_thread
from memprof.rendering.transformers import plot_depth_sweep, render_depth_sweep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128, help="batch of the memory sweep (default: 128)")
    p.add_argument("--timing-batch-size", type=int, default=32,
                   help="batch of the timed steps (default: 32; 128 takes minutes per step on a busy CPU)")
    p.add_argument("--depths", default="6,12,24,48", help="depths of the sweep (default: 6,12,24,48)")
    p.add_argument("--timing-depth", type=int, default=12, help="depth of the timed models (default: 12)")
    p.add_argument("--repeats", type=int, default=3, help="timing rounds (default: 3)")
    p.add_argument("--plot", default=None, help="write the sweep's plot to this PNG (default: none)")
    p.add_argument("--no-time", dest="timing", action="store_false", help="memory only (default: timed)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="timing only, no depth sweep (default: both)")
    args = p.parse_args()
    if args.memory:
        sweep(args)
    if args.timing:
        timing(args)


def sweep(args: argparse.Namespace) -> None:
    """The activation peaks over depth (estimated), printed, and plotted with ``--plot``."""
    depths = [int(d) for d in args.depths.split(",")]
    with one_thread():
        rows = depth_sweep(depths, args.batch_size)
    print(f"Activation peak of a training step, batch {args.batch_size} (estimated; target at depth 12: "
          f"<= {ACTIVATION_TARGET:.2f} of vit's)\n")
    print(render_depth_sweep(rows, args.batch_size))
    if args.plot:
        plot_depth_sweep(rows, args.plot, args.batch_size)
        print(f"wrote {args.plot}\n")


def timing(args: argparse.Namespace) -> None:
    """Rev-ViT's step time against its twin's and vit's, interleaved rounds, CPU time on one thread."""
    t = time_twins(args.timing_depth, args.timing_batch_size, args.repeats)
    table = [[name, f"{min(v):.3f}", f"{min(v) / min(t['times'][TWIN]):.2f}",
              " ".join(f"{x:.3f}" for x in v)] for name, v in t["times"].items()]
    print(f"Step time at depth {t['depth']}, batch {t['batch_size']} (CPU seconds, one thread, {t['repeats']} "
          f"interleaved rounds; target revvit / twin <= {TIME_TARGET:.2f})\n")
    print(tabulate(table, headers=["model", "fastest, s", "/ twin", "per round, s"], tablefmt="github",
                   disable_numparse=True))
    lo, hi = t["ratio_range"]
    print(f"\nrevvit / twin: {t['ratio']:.2f} (range over rounds {lo:.2f}-{hi:.2f}); revvit / vit: {t['vit_ratio']:.2f}")


if __name__ == "__main__":
    main()
