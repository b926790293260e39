"""The measurements behind memprof.recording.workspace: kernel scratch and the oneDNN LSTM workspace.

1. For every model of the estimate panel at batch 2 and 8 (one thread, float32), one training
   step runs with each ATen op inside a profiler range; each op's scratch is its allocator peak
   minus the larger of the live bytes before and after it. Per op with a rule: calls, measured
   and predicted total, and the worst call (predicted / measured). Ops holding scratch without
   a rule are listed too: candidates for a new rule.
2. The oneDNN LSTM workspace (a tensor autograd saves) over a grid of (batch, steps, input,
   hidden): the real kernel's size beside lstm_workspace_bytes().

Usage: python benchmarks/workspace_rules.py [--models a,b] [--batch-sizes 2,8]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from tabulate import tabulate
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.estimate_panel import PANEL, panel_model
from memprof.recording.allocations import measure_op_scratch
from memprof.recording.workspace import SCRATCH_RULES, find_scratch_rule, lstm_workspace_bytes
from memprof.units import format_bytes

#: (batch, steps, input, hidden): the shapes NOTE [ oneDNN LSTM workspace ] was fitted on.
LSTM_GRID = [(8, 8, 256, 64), (8, 8, 100, 64), (3, 5, 300, 100), (7, 9, 64, 200), (2, 3, 1000, 128),
             (8, 8, 128, 64), (8, 8, 32, 64), (16, 8, 64, 64), (8, 16, 32, 64), (8, 8, 32, 256),
             (8, 8, 32, 100), (1, 64, 32, 64), (5, 3, 32, 64), (4, 5, 8, 16), (32, 128, 256, 512),
             (4, 4, 512, 128), (6, 2, 48, 40)]


def _predict(func: object, args: tuple, kwargs: dict, out: object) -> int | None:
    rule = find_scratch_rule(str(func), "cpu")
    return None if rule is None else int(rule.bytes(args, kwargs, out))


def scratch_table(models: list[str], batch_sizes: list[int]) -> list[list[object]]:
    acc: dict[str, list] = defaultdict(lambda: [0, 0, 0, 0.0, 0.0])  # calls, measured, predicted, min, max ratio
    for name in models:
        pm = panel_model(name)
        for b in batch_sizes:
            torch.manual_seed(0)
            model = pm.build().train()
            x = torch.randn(b, *pm.input_shape)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

            def step() -> None:
                out = model(x)
                out = out[0] if isinstance(out, tuple) else out
                loss = nn.functional.cross_entropy(out, torch.zeros(b, dtype=torch.long)) if out.dim() == 2 \
                    else out.float().mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            step()  # optimizer state exists, as in a profiled step
            for s in measure_op_scratch(step, _predict):
                row = acc[s.op]
                row[0] += 1
                row[1] += s.scratch_bytes
                if s.predicted_bytes is not None:
                    row[2] += s.predicted_bytes
                    if s.scratch_bytes > 4096:
                        ratio = s.predicted_bytes / s.scratch_bytes
                        row[3] = ratio if row[3] == 0 else min(row[3], ratio)
                        row[4] = max(row[4], ratio)
    rows = []
    for op, (calls, measured, predicted, lo, hi) in sorted(acc.items(), key=lambda kv: -kv[1][1]):
        has_rule = find_scratch_rule(op, "cpu") is not None
        if not has_rule and measured < 4096 * calls:
            continue
        rows.append([op.replace("aten.", "").replace(".default", ""), calls, format_bytes(measured, "MiB"),
                     format_bytes(predicted, "MiB") if has_rule else "(no rule)",
                     f"{lo:.2f}-{hi:.2f}" if has_rule and hi else ""])
    return rows


def lstm_table() -> list[list[object]]:
    rows = []
    for b, t, i, h in LSTM_GRID:
        sizes: list[int] = []

        class _Workspace(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                if str(func) == "aten.mkldnn_rnn_layer.default":
                    sizes.append(out[3].untyped_storage().nbytes())
                return out

        rnn = nn.LSTM(i, h, batch_first=True)
        with _Workspace():
            rnn(torch.randn(b, t, i, requires_grad=True))
        rows.append([b, t, i, h, sizes[0], lstm_workspace_bytes(b, t, i, h),
                     "exact" if sizes[0] == lstm_workspace_bytes(b, t, i, h) else "DIFFERS"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(m.name for m in PANEL), help="comma-separated (default: the panel)")
    ap.add_argument("--batch-sizes", default="2,8", help="comma-separated (default: 2,8)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"CPU, torch {torch.__version__}, one thread, float32; {len(SCRATCH_RULES)} rules in memprof.recording.workspace")
    print("\nKernel scratch per op over the panel's steps (ratio: predicted / measured per call over 4 KiB)")
    print(tabulate(scratch_table(args.models.split(","), [int(b) for b in args.batch_sizes.split(",")]),
                   headers=["op", "calls", "measured total", "predicted total", "ratio range"],
                   tablefmt="github", disable_numparse=True))
    print("\noneDNN LSTM workspace (bytes): the real kernel vs lstm_workspace_bytes()")
    print(tabulate(lstm_table(), headers=["batch", "steps", "input", "hidden", "real", "rule", ""],
                   tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
