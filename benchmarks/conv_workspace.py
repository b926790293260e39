"""Memory no tensor owns inside a CPU convolution backward (a step profile's "unattributed" gap).

For a few convolution shapes of VGG-19 / Rev-VGG at a given batch size it runs one
``aten::convolution_backward`` under the profiler's memory events and prints, side by side:

- the bytes of the op's outputs (grad_input, grad_weight, grad_bias: tensors the tracker sees);
- the allocator's peak inside the op, above the bytes live before it;
- the difference: scratch that no tensor owns (on x86 CPUs, oneDNN reorders the input and the
  output gradient into its blocked layout), and that scratch relative to the layer's input.

Usage: python benchmarks/conv_workspace.py [--batch-size 128] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from tabulate import tabulate

from memprof.recording.allocations import conv_backward_scratch
from memprof.units import format_bytes

#: (in channels, out channels, height = width): layers of revvgg's and vgg19's stages.
SHAPES = [(3, 64, 32), (64, 64, 32), (64, 64, 16), (64, 128, 16), (128, 128, 8), (256, 256, 4), (512, 512, 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128, help="default: 128")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"oneDNN {'on' if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else 'off'}")
    rows = []
    for cin, cout, hw in SHAPES:
        m = conv_backward_scratch(cin, cout, hw, args.batch_size)
        rows.append([f"{cin}->{cout}, {hw}x{hw}", format_bytes(m.input_bytes, "MiB"), format_bytes(m.tensor_bytes, "MiB"),
                     format_bytes(m.peak_bytes, "MiB"), format_bytes(m.scratch_bytes, "MiB"),
                     f"{m.scratch_bytes / m.input_bytes:.2f}"])
    print(tabulate(rows, headers=["conv 3x3", "input", "grad tensors", "allocator peak in backward",
                                  "scratch (no tensor)", "scratch / input"], tablefmt="github",
                   disable_numparse=True))


if __name__ == "__main__":
    main()
