"""How much slower is a recorded training step than a plain one? (issues 4 and 12: at most 1.15x)

Four ways to run the same step, side by side in one run, on the same model, optimizer and
batch, interleaved so that machine load hits all alike:

- plain: the step alone;
- track fast: one step inside ``memprof.track()`` (default mode: allocator events from the
  profiler, global module/optimizer hooks, saved-tensor hooks; no per-op Python);
- track fine: one step inside ``memprof.track(mode="fine")`` (adds a per-op dispatch mode
  that sees which blocks a tensor owns, to tell kernel workspaces from temporaries);
- profile (per-op): ``measure_step``, the per-op storage tracker + allocator tracker that
  ``memprof profile`` and ``profile_step`` use.

Figures are CPU time of this process (other processes' load disturbs it much less than wall
time), one intra-op thread by default, garbage collected before each timing. Each round runs
every kind once, in an order that rotates from round to round; the table shows the fastest
recorded step over the fastest plain step, and the range of the per-round ratios. The step inside ``track()`` is timed on its own; the fixed cost of a ``track()`` block
(profiler start and stop, turning the events into step profiles) is shown separately, in
seconds, as "track block s". Likewise the full garbage collection ``measure_step`` makes once
before a profiled step (``profile_step`` and ``memprof profile`` pay it once per profile) is
timed apart, as "profile gc s", and left out of the per-op ratio.

Models: ``vgg19`` (memprof's registry, 3x32x32) and ``gpt2`` (a GPT-2 built from a config:
2 layers, 128 wide, 4 heads, batch of 8 sequences of 128 token ids, AdamW; needs the
``transformers`` test extra, skipped with a message without it). The batch size of vgg19 comes
from ``--batch-sizes``; gpt2 always uses 8 x 128.

Usage: python benchmarks/profiler_overhead.py [--models vgg19,gpt2] [--batch-sizes 16,128] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

import torch
from torch import nn

from memprof.recording.runner import make_optimizer, measure_step, run_step, targets_for, warm_up
from memprof.api.track import track
from memprof.models import get_model, get_model_info
from memprof.recording.allocations import CpuAllocatorTracker

Step = Callable[[], None]


def vgg_step(batch_size: int) -> tuple[Step, Step | None]:
    """(plain step, per-op measured step) of vgg19 with SGD."""
    torch.manual_seed(0)
    model = get_model("vgg19").train()
    x = torch.randn(batch_size, *get_model_info("vgg19").input_shape)
    opt = make_optimizer("sgd", model.parameters())
    targets = warm_up(model, opt, x, targets_for(batch_size, torch.device("cpu"), 0))

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        run_step(model, opt, x, targets)

    def per_op() -> None:
        opt.zero_grad(set_to_none=True)
        rec = measure_step(model, opt, x, targets, allocator=CpuAllocatorTracker(), collect=False)
        rec.tracker.timeline()

    return plain, per_op


def gpt2_step() -> tuple[Step, Step | None] | None:
    """(plain step, per-op measured step) of the GPT-2 configuration with AdamW, or None without transformers."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=128)
    model: nn.Module = GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(cfg.vocab_size, (8, 128))

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    def per_op() -> None:
        opt.zero_grad(set_to_none=True)
        rec = measure_step(model, opt, {"input_ids": ids, "labels": ids}, None, allocator=CpuAllocatorTracker(),
                           collect=False)
        rec.tracker.timeline()

    plain()  # creates the optimizer state
    return plain, per_op


def cpu_time(fn: Step) -> float:
    gc.collect()  # the previous kind's garbage is not this one's cost (measure_step's own collection, too)
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def tracked(step: Step, mode: str) -> tuple[float, float]:
    """(CPU time of the step inside track(), CPU time of the whole block minus the step)."""
    gc.collect()
    c0 = time.process_time()
    with track(mode=mode) as rec:
        inner = cpu_time(step)
    total = time.process_time() - c0
    assert len(rec.steps) == 1 and rec.steps[0].peak_bytes > 0
    return inner, total - inner


def measure(step: Step, per_op: Step | None, repeats: int) -> dict[str, list[float]]:
    """Interleaved rounds; per round the ratio of each kind to that round's plain step."""
    tracked(step, "fast")  # the profiler's first start costs seconds, once per process
    tracked(step, "fine")
    out: dict[str, list[float]] = {"plain": [], "fast": [], "fine": [], "per_op": [], "block": [], "collect": []}
    for r in range(repeats):
        times: dict[str, float] = {}
        kinds = ["plain", "fast", "fine"] + (["per_op"] if per_op is not None else [])
        for kind in kinds[r % len(kinds):] + kinds[: r % len(kinds)]:  # a different order each round
            if kind == "plain":
                times[kind] = cpu_time(step)
            elif kind == "per_op":
                times[kind] = cpu_time(per_op)  # type: ignore[arg-type]
                out["collect"].append(cpu_time(gc.collect))  # the full collection measure_step makes first
            else:
                times[kind], block = tracked(step, kind)
                if kind == "fast":
                    out["block"].append(block)
        out["plain"].append(times["plain"])
        for kind in kinds[1:]:
            out[kind].append(times[kind])
    return out


def fmt_ratio(times: list[float], plain: list[float]) -> str:
    """Fastest over fastest, and the range of the per-round ratios."""
    if not times:
        return "-"
    per_round = [t / p for t, p in zip(times, plain)]
    return f"{min(times) / min(plain):.3f} ({min(per_round):.2f}-{max(per_round):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vgg19,gpt2", help="comma-separated: vgg19, gpt2 (default: vgg19,gpt2)")
    ap.add_argument("--batch-sizes", default="16,128", help="vgg19 batch sizes, comma-separated (default: 16,128)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: 3)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU time, {torch.get_num_threads()} thread(s), {args.repeats} interleaved rounds; torch {torch.__version__}")
    print("ratio to a plain step: fastest over fastest (range of the per-round ratios); kinds in a rotating order")
    head = (f"{'model':<8} {'batch':>7} {'plain s':>8} {'track fast':>20} {'track fine':>20} "
            f"{'profile (per-op)':>20} {'track block s':>14} {'profile gc s':>13}")
    print(head)
    for name in args.models.split(","):
        cases: list[tuple[str, tuple[Step, Step | None] | None]] = []
        if name == "vgg19":
            cases = [(str(b), vgg_step(int(b))) for b in args.batch_sizes.split(",")]
        elif name == "gpt2":
            cases = [("8x128", gpt2_step())]
        else:
            raise SystemExit(f"unknown model {name!r}; allowed: vgg19, gpt2")
        for batch, steps in cases:
            if steps is None:
                print(f"{name:<8} {batch:>7}  skipped: pip install transformers (test extra)")
                continue
            r = measure(steps[0], steps[1], args.repeats)
            plain = r["plain"]
            print(f"{name:<8} {batch:>7} {min(plain):>8.3f} {fmt_ratio(r['fast'], plain):>20} "
                  f"{fmt_ratio(r['fine'], plain):>20} {fmt_ratio(r['per_op'], plain):>20} {min(r['block']):>14.3f} "
                  f"{min(r['collect'], default=float('nan')):>13.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
