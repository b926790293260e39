"""How close the estimate of a training step's peak comes to the CPU allocator's measured peak.

For every model of the panel (``benchmarks/estimate_panel.py``: the registered models, an LSTM
and a GRU language model, ``nn.TransformerEncoder``, torchvision ResNet-50, MobileNet-V2,
EfficientNet-B0, ConvNeXt-T and a small VisionTransformer at 64x64) and batch sizes 2, 32 and
128, it measures one steady-state step at the allocator (one thread) and estimates the same step
under FakeTensorMode, and prints model, batch, measured peak, estimated peak, the error, whether
the tensor-owned bytes are equal, and where the measured peak fell. Then the median and worst
absolute error. Memory figures are deterministic; nothing here is timed.

Usage: python benchmarks/estimate_accuracy.py [--models a,b] [--batch-sizes 2,32,128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabulate import tabulate

from benchmarks.estimate_panel import PANEL, measure_and_estimate, panel_model
from memprof.units import format_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(m.name for m in PANEL), help="comma-separated (default: the panel)")
    ap.add_argument("--batch-sizes", default="2,32,128", help="comma-separated (default: 2,32,128)")
    args = ap.parse_args()
    import torch

    print(f"CPU, torch {torch.__version__}, one thread; peaks are the allocator's (measured) and the "
          "estimate's (FakeTensorMode + memprof.recording.workspace rules)")
    rows, errors = [], []
    for name in args.models.split(","):
        pm = panel_model(name)
        for b in map(int, args.batch_sizes.split(",")):
            if b not in pm.batch_sizes:
                continue
            acc = measure_and_estimate(pm, b)
            m, e = acc.measured, acc.estimated
            errors.append(abs(acc.error))
            where = m.notes[0].replace("the allocator peak was reached inside ", "") if m.notes else ""
            rows.append([name, b, format_bytes(m.peak_bytes, "MiB"), format_bytes(e.peak_bytes, "MiB"),
                         f"{100 * acc.error:+.2f}%",
                         "yes" if m.attributed_peak_bytes == e.attributed_peak_bytes else
                         f"no ({format_bytes(e.attributed_peak_bytes - m.attributed_peak_bytes, 'MiB')})",
                         where])
            print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    print(tabulate(rows, headers=["model", "batch", "measured peak", "estimated peak", "error",
                                  "tensor-owned equal", "measured peak inside"],
                   tablefmt="github", disable_numparse=True))
    if errors:
        print(f"\n{len(errors)} steps: median |error| {100 * statistics.median(errors):.2f}%, "
              f"worst {100 * max(errors):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
