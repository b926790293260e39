"""Check every CUDA path of the step profiler and print estimated vs measured peaks.

For when a GPU is lent: one script, a few minutes. For each registered model and batch size it
runs a measured CUDA step (max_memory_allocated / max_memory_reserved per step, phase and
module) and a CUDA estimate (FakeTensorMode + the caching-allocator model), and prints:

- measured peak (allocated, reserved) vs estimated; the ratio estimated / measured;
- tensor-owned (attributed) bytes, which must be equal in both (same storages);
- the unattributed gap (cuDNN/cuBLAS workspaces and rounding);
- that per-module allocator peaks exist, also for blocks recomputed inside reversible backward;
- that a storage freed by resize_(0) is seen by the CUDA allocator tracker.

Exit code 1 if a check fails. Usage: python benchmarks/cuda_check.py [--batch-sizes 8,64] [--models ...]
"""

from __future__ import annotations

import argparse
import sys

import torch


def check_resize() -> bool:
    from memprof.recording.allocations import CudaAllocatorTracker
    from memprof.recording.attribution import StorageTracker

    dev = torch.device("cuda", torch.cuda.current_device())
    tracker = StorageTracker(torch.nn.Linear(2, 2).to(dev), None, [])
    alloc = CudaAllocatorTracker(dev)
    mib = 1 << 20
    with alloc.track(), tracker.track():
        start = tracker.live
        a = torch.empty(mib // 4, device=dev)
        a.untyped_storage().resize_(0)
        b = torch.empty(mib // 4, device=dev)
        del a, b
    ok = alloc.result.peak_increase == mib and tracker.peak - start == mib
    print(f"resize_(0) seen: allocator peak +{alloc.result.peak_increase} B, tracker +{tracker.peak - start} B "
          f"(expect {mib} each): {'ok' if ok else 'FAIL'}")
    return ok


def main() -> int:
    from memprof.api.step import profile_step
    from memprof.models import get_model, get_model_info, list_models
    from memprof.units import format_bytes

    ap = argparse.ArgumentParser(description="check the CUDA paths of memprof profile")
    ap.add_argument("--models", default=",".join(list_models()), help="comma-separated (default: all registered)")
    ap.add_argument("--batch-sizes", default="8,128", help="comma-separated (default: 8,128)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    failures = 0 if check_resize() else 1
    mib = lambda v: format_bytes(v, "MiB")  # noqa: E731
    header = (f"{'model':<8} {'batch':>5} {'meas. peak':>12} {'est. peak':>12} {'est/meas':>8} "
              f"{'meas. reserved':>15} {'est. reserved':>14} {'attributed (meas=est)':>24} {'gap':>10} {'step s':>7}")
    print(header)
    act: dict[tuple[str, int], int] = {}
    for name in args.models.split(","):
        shape = get_model_info(name).input_shape
        for b in map(int, args.batch_sizes.split(",")):
            torch.manual_seed(0)
            model = get_model(name)
            m = profile_step(model, b, shape, device="cuda", name=name)
            e = profile_step(model, b, shape, device="cuda", estimate=True, name=name)
            same = (m.attributed_peak_bytes == e.attributed_peak_bytes
                    and m.activation_peak_bytes == e.activation_peak_bytes)
            modules_ok = all(r.get("forward_allocated_peak_bytes") is not None for r in m.modules if r["calls"])
            recompute_ok = name == "vgg19" or any(
                r.get("backward_allocated_peak_bytes") is not None and ".F" in r["name"] for r in m.modules)
            adds_up = sum(m.at_peak.values()) == m.peak_bytes and m.at_peak["unattributed"] >= 0
            ok = same and modules_ok and recompute_ok and adds_up
            failures += not ok
            print(f"{name:<8} {b:>5} {mib(m.peak_bytes):>12} {mib(e.peak_bytes):>12} {e.peak_bytes / m.peak_bytes:>8.3f} "
                  f"{mib(m.reserved_peak_bytes):>15} {mib(e.reserved_peak_bytes):>14} "
                  f"{mib(m.attributed_peak_bytes) + ('' if same else ' != ' + mib(e.attributed_peak_bytes)):>24} "
                  f"{mib(m.at_peak['unattributed']):>10} {m.step_time_s:>7.3f}"
                  + ("" if ok else f"  FAIL same={same} modules={modules_ok} recompute={recompute_ok} adds_up={adds_up}"))
            act[(name, b)] = m.activation_peak_bytes
            for ph in ("forward", "backward", "optimizer"):
                print(f"{'':<14} {ph:<9} measured {mib(m.phases[ph]['peak_bytes'])}, estimated {mib(e.phases[ph]['peak_bytes'])}")
            del model
            torch.cuda.empty_cache()
    print("\nactivation peak (measured on this GPU, tensor-owned), relative to vgg19's at the same batch:")
    for (name, b), v in act.items():
        ref = act.get(("vgg19", b))
        print(f"  {name:<8} batch {b:>4}: {mib(v):>12}" + (f"  {v / ref:.3f} of vgg19" if ref else ""))
    print("all CUDA checks passed" if failures == 0 else f"{failures} CUDA check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
