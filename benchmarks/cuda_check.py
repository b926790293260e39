"""Check the CUDA paths of memprof on a GPU: predicted vs measured peaks, and fit vs the real maximum batch.

For when a GPU is lent (one script; ``--quick`` fits in a few minutes). Without a GPU it says so
and exits 0; ``--dry-run`` runs only the predictions (no GPU needed) to check the script itself.

1. ``resize_(0)`` is seen by the CUDA allocator tracker and the storage tracker alike.
2. For each model and batch size: one real training step on the GPU (warm-up step first, then
   ``reset_peak_memory_stats`` and the measured step) gives ``max_memory_allocated`` and
   ``max_memory_reserved`` of the process; the CUDA estimate (FakeTensorMode on the GPU device,
   nothing allocated, the caching-allocator model of memprof.recording.cuda_allocator, the
   workspace rules of memprof.recording.workspace) predicts both. Printed side by side with the
   ratio predicted / measured, once with default settings and once with expandable segments.
   Targets (issue 13): both within 3%.
3. fit vs the real maximum: the device is capped at ``--budget`` with
   ``torch.cuda.set_per_process_memory_fraction``; ``memprof.fit_batch_size`` predicts the largest
   batch whose reserved peak fits; a search with real steps (OutOfMemoryError caught) finds the
   largest batch that really runs. Target: fit equal within 1 batch or 1%, never above.

Exit code 1 if a check misses its target. Usage:
    python benchmarks/cuda_check.py [--models vgg19,revvgg] [--batch-sizes 8,128] [--budget 4GiB] [--quick] [--dry-run]
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.estimate_panel import PANEL, panel_model

MiB = 1 << 20


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / MiB:,.1f} MiB"


def check_resize() -> bool:
    from memprof.recording.allocations import CudaAllocatorTracker
    from memprof.recording.attribution import StorageTracker

    dev = torch.device("cuda", torch.cuda.current_device())
    tracker = StorageTracker(torch.nn.Linear(2, 2).to(dev), None, [])
    alloc = CudaAllocatorTracker(dev)
    with alloc.track(), tracker.track():
        start = tracker.live
        a = torch.empty(MiB // 4, device=dev)
        a.untyped_storage().resize_(0)
        b = torch.empty(MiB // 4, device=dev)
        del a, b
    ok = alloc.result is not None and alloc.result.peak_increase == MiB and tracker.peak - start == MiB
    print(f"resize_(0) seen by both trackers: {'ok' if ok else 'FAIL'}")
    return ok


def _fresh_device() -> None:
    gc.collect()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()  # the estimate allocates the cuBLAS workspace inside the step, as a fresh process does
    torch.cuda.empty_cache()


def real_step_peaks(name: str, batch: int) -> tuple[int, int]:
    """(max_memory_allocated, max_memory_reserved) of one real steady-state step of a fresh model."""
    from memprof.recording.runner import make_optimizer, run_step, targets_for, warm_up

    pm = panel_model(name)
    _fresh_device()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = pm.build().to(dev).train()
    x = torch.randn(batch, *pm.input_shape, device=dev)
    opt = make_optimizer("sgd", model.parameters())
    targets = warm_up(model, opt, x, targets_for(batch, dev, 0))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run_step(model, opt, x, targets)
    torch.cuda.synchronize()
    result = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    del model, x, opt, targets
    _fresh_device()
    return result


def runs(name: str, batch: int) -> bool:
    """Whether one warm-up step and one step at ``batch`` run within the capped device."""
    try:
        real_step_peaks(name, batch)
        return True
    except torch.cuda.OutOfMemoryError:
        _fresh_device()
        return False


def real_max_batch(name: str, start: int) -> int:
    """The largest batch that really runs: grow from ``start`` until an OOM, then bisect."""
    lo, hi = 0, None
    b = max(start, 1)
    while hi is None:
        if runs(name, b):
            lo, b = b, b * 2
        else:
            hi = b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if runs(name, mid):
            lo = mid
        else:
            hi = mid
    return lo


def main() -> int:
    from memprof.aggregation.fit import fitted_figure
    from memprof.api.step import fit_batch_size, profile_step
    from memprof.units import parse_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vgg19,revvgg,irevvgg,lstm-lm,transformer-encoder,resnet50,vit-small-64",
                    help=f"comma-separated panel models (default: seven of {', '.join(m.name for m in PANEL)})")
    ap.add_argument("--batch-sizes", default="8,128", help="comma-separated (default: 8,128)")
    ap.add_argument("--budget", default="4GiB", help="device cap for the fit check (default: 4GiB)")
    ap.add_argument("--quick", action="store_true", help="three models, batch 32, fit on two (default: off)")
    ap.add_argument("--dry-run", action="store_true", help="predictions only, no GPU needed (default: off)")
    args = ap.parse_args()
    models = args.models.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    fit_models = models
    if args.quick:
        models, batches, fit_models = ["vgg19", "lstm-lm", "vit-small-64"], [32], ["vgg19", "lstm-lm"]
    have_gpu = torch.cuda.is_available()
    if not have_gpu and not args.dry_run:
        print("no CUDA device: nothing to check (--dry-run runs the predictions alone)")
        return 0
    print(f"device: {torch.cuda.get_device_name() if have_gpu else 'none (dry run)'} | torch {torch.__version__}")
    failures = 0 if args.dry_run else (0 if check_resize() else 1)
    print("\nmodel | batch | expandable | measured allocated | predicted | pred/meas | measured reserved | "
          "predicted | pred/meas")
    for name in models:
        pm = panel_model(name)
        for b in batches:
            measured = (None, None) if args.dry_run else real_step_peaks(name, b)
            for expandable in (False, True):
                torch.manual_seed(0)
                est = profile_step(pm.build(), b, pm.input_shape, device="cuda", estimate=True, name=name,
                                   expandable_segments=expandable)
                pa, pr = est.peak_bytes, est.reserved_peak_bytes or 0
                ma, mr = measured
                if expandable and ma is not None:  # the real run used the default settings
                    ma = mr = None
                ra = f"{pa / ma:.3f}" if ma else "-"
                rr = f"{pr / mr:.3f}" if mr else "-"
                miss = ma is not None and (abs(pa / ma - 1) > 0.03 or abs(pr / mr - 1) > 0.03)
                failures += miss
                print(f"{name} | {b} | {'on' if expandable else 'off'} | {_mib(ma)} | {_mib(pa)} | {ra} | "
                      f"{_mib(mr)} | {_mib(pr)} | {rr}" + ("  MISSES 3%" if miss else ""), flush=True)
                if not expandable:
                    for note in est.notes:
                        if note.startswith("not modelled"):
                            print(f"    {note}")
    budget = parse_bytes(args.budget)
    print(f"\nfit at a {args.budget} cap (set_per_process_memory_fraction): predicted vs real maximum batch")
    for name in fit_models:
        pm = panel_model(name)
        torch.manual_seed(0)
        batch, prof = fit_batch_size(pm.build(), budget, pm.input_shape, device="cuda", name=name)
        figure, fitted = fitted_figure(prof)
        if args.dry_run:
            print(f"{name}: fit {batch} ({figure} {_mib(fitted)})")
            continue
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(budget / total)
        try:
            real = real_max_batch(name, max(batch // 2, 1))
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        ok = batch <= real and (real - batch <= 1 or real - batch <= 0.01 * real)
        failures += not ok
        print(f"{name}: fit {batch} ({figure} {_mib(fitted)}), real maximum {real}: "
              f"{'ok' if ok else 'MISSES (fit must be <= real, within 1 batch or 1%)'}", flush=True)
    print("all CUDA checks met their targets" if failures == 0 else f"{failures} CUDA check(s) missed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
