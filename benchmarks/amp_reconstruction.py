"""How exactly a reversible sequence rebuilds its input under mixed precision, by depth.

For 1, 16 and 64 additive couplings (F and G: conv3x3 + BN + ReLU + conv3x3 + BN, BatchNorm in
training mode as during training) and each precision (float32; bfloat16 autocast; float16
autocast on CUDA), the script reports

- the relative L2 error and the largest absolute error of the sequence's input rebuilt from
  its output by ``inverse`` under the same autocast state (memprof.train's
  ``measure_reconstruction_error``, the figure ``memprof train`` logs every epoch), and
- the relative L2 error of the parameter gradients of the reversible sequence against its
  plain-autograd twin (same weights, same autocast): what that rebuilding error does to
  training.

Under autocast the residual stream (the sequence's input, and so every ``x + F(x)``) may itself
be low precision: in Rev-VGG it is the output of a convolution run under autocast. The
``stream`` column says which: ``float32`` (the additions are exact to fp32 rounding, only F and G
round to 16 bits) or the autocast dtype (every addition rounds to 16 bits too, and the
subtraction in the inverse cannot undo it).

All rows are measured side by side in one run. Defaults are small (about a minute on 2 CPU
cores); ``--channels 128 --size 32 --batch 32`` is closer to Rev-VGG's first stage.

    python benchmarks/amp_reconstruction.py [--blocks 1,16,64] [--device auto] [--csv PATH]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from torch import nn

from memprof.reversible import AdditiveCoupling, ReversibleSequence
from memprof.train import measure_reconstruction_error
from memprof.train.measurements import autocast_context


def make_branch(c: int) -> nn.Sequential:
    """F or G: conv3x3 + BN + ReLU + conv3x3 + BN (as in Rev-VGG's couplings)."""
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
    )


def measure_grad_error(seq: ReversibleSequence, x: torch.Tensor, amp: str) -> float:
    """Relative L2 error of the reversible parameter gradients against the plain twin's."""
    plain = copy.deepcopy(seq)
    plain.reversible = False
    g = torch.Generator(device="cpu").manual_seed(1)
    weight = torch.randn(x.shape, generator=g).to(x.device)
    x = x.detach()
    grads = []
    for model in (seq, plain):
        model.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            with autocast_context(amp, x.device):
                out = model(x)
            (out.float() * weight).sum().backward()
        grads.append(torch.cat([p.grad.double().flatten() for p in model.parameters()]))
    seq.zero_grad(set_to_none=True)
    return float((grads[0] - grads[1]).norm() / grads[1].norm())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="1,16,64", help="sequence depths (default: 1,16,64)")
    parser.add_argument("--channels", type=int, default=32, help="channels, split in halves (default: 32)")
    parser.add_argument("--size", type=int, default=16, help="height = width (default: 16)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--csv", default=None, help="also write the table as CSV here (default: no)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    modes = ["off", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    depths = [int(d) for d in args.blocks.split(",")]
    rows = []
    for depth in depths:
        torch.manual_seed(args.seed)
        half = args.channels // 2
        seq = ReversibleSequence(AdditiveCoupling(make_branch(half), make_branch(half)) for _ in range(depth)).to(device)
        x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
        streams = [("off", torch.float32)] + [(m, torch.float32) for m in modes[1:]] + [
            (m, torch.bfloat16 if m == "bf16" else torch.float16) for m in modes[1:]
        ]
        for amp, stream in streams:
            t0 = time.perf_counter()
            xs = x.to(stream)
            rec = measure_reconstruction_error(seq, xs, amp)
            assert rec is not None
            grad_err = measure_grad_error(seq, xs, amp)
            rows.append({
                "blocks": depth,
                "precision": {"off": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}[amp],
                "stream": str(stream).replace("torch.", ""),
                "recon_rel_err": rec.rel,
                "recon_max_abs_err": rec.max_abs,
                "grad_rel_err_vs_plain": grad_err,
                "seconds": time.perf_counter() - t0,
            })

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# Reversible reconstruction error by depth and precision (measured, {name}, torch {torch.__version__})")
    print(f"# input ({args.batch}, {args.channels}, {args.size}, {args.size}), BatchNorm in training mode, seed {args.seed}")
    print(f"# command: python benchmarks/amp_reconstruction.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    header = f"| {'blocks':>6} | {'precision':<18} | {'stream':<8} | {'recon rel err':>13} | {'recon max abs':>13} | {'grad rel err vs plain':>21} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['blocks']:>6} | {r['precision']:<18} | {r['stream']:<8} | {r['recon_rel_err']:>13.2e} | "
              f"{r['recon_max_abs_err']:>13.2e} | {r['grad_rel_err_vs_plain']:>21.2e} |")
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
