"""Memory that kernels hold and fake execution does not see: one table of rules.

An estimate runs every ATen op under ``FakeTensorMode``: outputs get storages of the right size,
but two kinds of memory differ from a real run on the device the estimate stands for.

- **Outputs the fake kernel sizes wrongly** (:data:`OUTPUT_RULES`): the meta kernel of
  ``aten.mkldnn_rnn_layer`` returns an empty workspace, while oneDNN's LSTM returns one that
  autograd saves for backward (128 MiB per layer for a 512-unit LSTM over 128 steps at batch 32).
  The estimate replaces the fake output by one of the real size.
- **Scratch** (:data:`SCRATCH_RULES`): buffers a kernel allocates and frees before it returns
  (oneDNN reorders into blocked layouts, RNN scratchpads, ``.contiguous()`` copies inside a
  kernel). No tensor the op returns owns them, so only the allocator sees them; each rule gives
  the bytes held at the op's peak beyond what it returns, as a function of the op's arguments.
  Lifetime: inside the op (allocated after its outputs, freed before it returns).

Each rule says where its numbers come from. ``python benchmarks/workspace_rules.py`` measures
every rule's op over a shape grid at the CPU allocator (:func:`memprof.recording.allocations.
measure_op_scratch`, one thread) and prints measured beside predicted; re-run it after a PyTorch
or oneDNN upgrade. To add a rule, append one :class:`ScratchRule` (or :class:`OutputRule`) to the
table below with the op's overload name, the device type, a function of the op's arguments
(``args``, ``kwargs``, ``out``: the fake tensors themselves) and its source.

Ops without a rule are assumed to hold no scratch: on the CPU the panel of
``benchmarks/estimate_panel.py`` shows none above 4 KiB besides the ones below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "OUTPUT_RULES",
    "SCRATCH_RULES",
    "OutputRule",
    "ScratchRule",
    "cublas_workspace_bytes",
    "find_output_rule",
    "find_scratch_rule",
    "lstm_workspace_bytes",
]

_PAGE = 4096


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _good_ld(n: int) -> int:
    """oneDNN's leading dimension for RNN buffers: a multiple of 16 floats, never a multiple of 256."""
    ld = _round_up(n, 16)
    return ld + 16 if ld % 256 == 0 else ld


@dataclass(frozen=True)
class ScratchRule:
    """Bytes one op's kernel holds inside the op beyond the tensors it returns.

    Attributes:
        op: the overload's name, as ``str(func)``: ``aten.convolution_backward.default``.
        device: ``cpu`` or ``cuda``.
        bytes: ``f(args, kwargs, out) -> int``; the arguments are the op's (fake) tensors.
        source: where the rule comes from (a NOTE below, a benchmark, documentation).
        persistent: True when the memory is kept after the op (a library workspace allocated
            once per handle), False when it is freed before the op returns.
    """

    op: str
    device: str
    bytes: Callable[[tuple, dict, Any], int]
    source: str
    persistent: bool = False


@dataclass(frozen=True)
class OutputRule:
    """A correction of a fake kernel's output: ``fix(args, kwargs, out) -> out`` on the real device."""

    op: str
    device: str
    fix: Callable[[tuple, dict, Any], Any]
    source: str


# NOTE [ oneDNN LSTM workspace ]
# aten.mkldnn_rnn_layer (one layer, one direction of nn.LSTM on the CPU in training) returns
# (output, hy, cy, workspace); autograd saves the workspace for mkldnn_rnn_layer_backward.
# PyTorch sizes it with oneDNN's workspace descriptor; the meta kernel returns 0 bytes. Measured
# over 17 shapes (batch B 1..64, steps T 1..128, input I 8..1000, hidden H 16..512, float32;
# benchmarks/workspace_rules.py), the size is, exactly for every shape, a sequence of parts each
# starting on a 4 KiB page, the total rounded up to a page:
#   gates      T*B*ld(4H)                 hidden states    T*B*ld(H)
#   2 parts of 2*(T+1)*B*H                3 parts of 2*(T+1)*B*ld(max(I, H))
# times 4 bytes, where ld(n) rounds n up to 16 and adds 16 to a multiple of 256 (oneDNN's
# get_good_ld). In bfloat16 the parts are smaller (a 8x8x32->64 layer: 192 KiB instead of
# 264 KiB); the float32 size is used there, an upper bound, and the estimate says so.
def lstm_workspace_bytes(batch: int, steps: int, input_size: int, hidden: int) -> int:
    """oneDNN's LSTM training workspace for one layer and direction (float32), in bytes."""
    wide = _good_ld(max(input_size, hidden))
    parts = [steps * batch * _good_ld(4 * hidden), steps * batch * _good_ld(hidden)]
    parts += [2 * (steps + 1) * batch * hidden] * 2 + [2 * (steps + 1) * batch * wide] * 3
    offset = 0
    for p in parts:
        offset = _round_up(offset, _PAGE) + 4 * p
    return _round_up(offset, _PAGE)


def _rnn_dims(args: tuple) -> tuple[int, int, int, int]:
    """(batch, steps, input size, hidden) of an mkldnn_rnn_layer(_backward) call."""
    x, hx = args[0], args[5]  # input (T, B, I) or (B, T, I); hx (B, H) in both ops
    batch, hidden = hx.shape[-2], hx.shape[-1]
    return batch, x.numel() // (batch * x.shape[-1]), x.shape[-1], hidden


def _fix_lstm_workspace(args: tuple, kwargs: dict, out: Any) -> Any:
    output, hy, cy, workspace = out
    if workspace.numel() != 0:
        return out
    b, t, i, h = _rnn_dims(args)
    real = torch.empty(lstm_workspace_bytes(b, t, i, h), dtype=torch.uint8, device=workspace.device)
    return output, hy, cy, real


OUTPUT_RULES: tuple[OutputRule, ...] = (
    OutputRule("aten.mkldnn_rnn_layer.default", "cpu", _fix_lstm_workspace, "NOTE [ oneDNN LSTM workspace ]"),
)


# NOTE [ oneDNN RNN scratchpads ]
# Inside mkldnn_rnn_layer the kernel reorders both weight matrices into oneDNN's layout and
# keeps a gates scratchpad of T*B*ld(4H) floats; backward keeps the gate gradients, the reordered
# weights, for hidden sizes of 256 and more a second weight-sized buffer (the weight gradient in
# oneDNN's layout; absent at 64-128), and the state gradients of every step. Fitted on 19 shapes
# (benchmarks/workspace_rules.py; float32, one thread): forward within 3% of the measurement for
# every shape; backward within 2% for the panel's LSTM (256->512) and the small ones (64->128),
# up to 10% off between (hidden 200-256 with few steps).
#   forward:  4*(T*B*ld(4H) + 4H*(I+H) + 2*B*max(I,H)) + 16 KiB
#   backward: 4*(T*B*ld(4H) + k*4H*(I+H) + (T+1)*B*ld(max(I,H))) + 20 KiB, k = 2 if H >= 256 else 1
def _lstm_fwd_scratch(args: tuple, kwargs: dict, out: Any) -> int:
    b, t, i, h = _rnn_dims(args)
    return 4 * (t * b * _good_ld(4 * h) + 4 * h * (i + h) + 2 * b * max(i, h)) + 16384


def _lstm_bwd_scratch(args: tuple, kwargs: dict, out: Any) -> int:
    b, t, i, h = _rnn_dims(args)
    weight_copies = 2 if h >= 256 else 1
    return 4 * (t * b * _good_ld(4 * h) + weight_copies * 4 * h * (i + h) + (t + 1) * b * _good_ld(max(i, h))) + 20480


# NOTE [ oneDNN convolution scratch ]
# Measured per call over the convolutions of the panel (benchmarks/workspace_rules.py: VGG-19,
# Rev-VGG, i-Rev-VGG, ResNet-50, MobileNet-V2, EfficientNet-B0, ConvNeXt-T, batch 2 and 8, one
# thread, float32). oneDNN reorders plain NCHW tensors into blocked layouts (nChw16c) and back:
# - forward, groups 1: the output and the weights are reordered (out + weight bytes), and the
#   input too when it has at least 8 channels; a 3-channel input is used in place;
# - backward, groups 1: the larger of (input + output gradient), reordered for the input
#   gradient, and the weights, reordered for the weight gradient; the measurement shows one or
#   the other, never both at once (5.5 MiB for a 64-channel 32x32 layer at batch 8);
# - depthwise (groups = channels): forward holds input + output; backward the input and output
#   gradient, or per-channel weight-gradient accumulators (16 B per tap and channel for 3x3 and
#   5x5 kernels, 1 KiB per tap and channel for ConvNeXt's 7x7 kernels), whichever is larger.
# oneDNN picks layouts by shape and thread count: these rules hold one thread's measurements;
# where they miss, the estimate errs high (an upper bound for the cases measured).
def _conv_fwd_scratch(args: tuple, kwargs: dict, out: Any) -> int:
    x, w = args[0], args[1]
    groups = args[8] if len(args) > 8 else 1
    if x.dim() != 4:
        return 0
    if groups == 1:
        return _nbytes(out) + _nbytes(w) + (_nbytes(x) if x.shape[1] >= 8 else 0)
    if groups == x.shape[1]:
        return _nbytes(out) + _nbytes(x)
    return _nbytes(out) + _nbytes(w)


def _conv_bwd_scratch(args: tuple, kwargs: dict, out: Any) -> int:
    grad_out, x, w = args[0], args[1], args[2]
    groups = args[9] if len(args) > 9 else 1
    mask = args[10] if len(args) > 10 else (True, True, True)
    if x.dim() != 4:
        return 0
    acts = (_nbytes(x) if mask[0] else 0) + _nbytes(grad_out)
    if groups == 1:
        return max(acts, _nbytes(w) if mask[1] else 0)
    if groups == x.shape[1]:
        taps = w.shape[2] * w.shape[3]
        per_tap = 1024 if w.shape[2] >= 7 else 16
        return max(acts, taps * x.shape[1] * per_tap if mask[1] else 0)
    return max(acts, _nbytes(w))


# NOTE [ Normalisation scratch on the CPU ]
# native_batch_norm_backward holds one input-sized buffer (measured: exactly the input's bytes
# for 560 of 590 calls of the panel; the other 30, inside reversible recomputation, hold a few
# hundred bytes, where this rule errs high). native_layer_norm and its backward copy each
# non-contiguous tensor they receive (input, and the output gradient in backward) into a
# contiguous one (measured: 1.00x or 2.00x the input, exactly, when the input is a permuted or
# transposed view; 2 floats per row otherwise).
def _bn_bwd_scratch(args: tuple, kwargs: dict, out: Any) -> int:
    return _nbytes(args[1])


def _ln_fwd_scratch(args: tuple, kwargs: dict, out: Any) -> int:
    x = args[0]
    return 0 if x.is_contiguous() else _nbytes(x)


def _ln_bwd_scratch(args: tuple, kwargs: dict, out: Any) -> int:
    grad_out, x = args[0], args[1]
    return sum(_nbytes(t) for t in (grad_out, x) if not t.is_contiguous())


# NOTE [ Attention scratch on the CPU ]
# The CPU flash-attention backward (_scaled_dot_product_flash_attention_for_cpu_backward) holds
# buffers about the size of one of q, k, v (measured 1.03x-1.13x of q for the panel's ViT), and
# the math path's _safe_softmax a quarter of its input (a bool mask of the fully masked rows).
def _sdpa_cpu_bwd_scratch(args: tuple, kwargs: dict, out: Any) -> int:
    return _nbytes(args[1]) + 16384


def _safe_softmax_scratch(args: tuple, kwargs: dict, out: Any) -> int:
    return args[0].numel() + 4


# NOTE [ cuBLAS workspace ]
# PyTorch gives every (cuBLAS handle, stream) pair one workspace, allocated through the caching
# allocator at the first matmul and kept for the life of the process. Its size follows
# CUBLAS_WORKSPACE_CONFIG, whose default is ":4096:2:16:8" (2 chunks of 4096 KiB and 8 of 16 KiB:
# 8.125 MiB), and ":4096:8" on Hopper and newer (32 MiB); cuBLASLt shares it. (PyTorch
# documentation, "Reproducibility" and "CUDA semantics"; aten/src/ATen/cuda/CublasHandlePool.cpp.)
# Not yet checked on a GPU.
def cublas_workspace_bytes(major_capability: int = 8) -> int:
    """The default cuBLAS workspace of one handle and stream, for a GPU of this compute capability."""
    import os

    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config is None:
        config = ":4096:8" if major_capability >= 9 else ":4096:2:16:8"
    fields = [int(v) for v in config.split(":") if v]
    return sum(fields[i] * 1024 * fields[i + 1] for i in range(0, len(fields) - 1, 2))


def _cublas(args: tuple, kwargs: dict, out: Any) -> int:
    major = 8
    if torch.cuda.is_available():  # only when estimating on a machine with a GPU
        major = torch.cuda.get_device_capability()[0]
    return cublas_workspace_bytes(major)


SCRATCH_RULES: tuple[ScratchRule, ...] = (
    ScratchRule("aten.mkldnn_rnn_layer.default", "cpu", _lstm_fwd_scratch, "NOTE [ oneDNN RNN scratchpads ]"),
    ScratchRule("aten.mkldnn_rnn_layer_backward.default", "cpu", _lstm_bwd_scratch, "NOTE [ oneDNN RNN scratchpads ]"),
    ScratchRule("aten.convolution.default", "cpu", _conv_fwd_scratch, "NOTE [ oneDNN convolution scratch ]"),
    ScratchRule("aten.convolution_backward.default", "cpu", _conv_bwd_scratch, "NOTE [ oneDNN convolution scratch ]"),
    ScratchRule("aten.native_batch_norm_backward.default", "cpu", _bn_bwd_scratch,
                "NOTE [ Normalisation scratch on the CPU ]"),
    ScratchRule("aten.native_layer_norm.default", "cpu", _ln_fwd_scratch, "NOTE [ Normalisation scratch on the CPU ]"),
    ScratchRule("aten.native_layer_norm_backward.default", "cpu", _ln_bwd_scratch,
                "NOTE [ Normalisation scratch on the CPU ]"),
    ScratchRule("aten._scaled_dot_product_flash_attention_for_cpu_backward.default", "cpu", _sdpa_cpu_bwd_scratch,
                "NOTE [ Attention scratch on the CPU ]"),
    ScratchRule("aten._safe_softmax.default", "cpu", _safe_softmax_scratch, "NOTE [ Attention scratch on the CPU ]"),
    ScratchRule("aten.mm.default", "cuda", _cublas, "NOTE [ cuBLAS workspace ]", persistent=True),
    ScratchRule("aten.addmm.default", "cuda", _cublas, "NOTE [ cuBLAS workspace ]", persistent=True),
    ScratchRule("aten.bmm.default", "cuda", _cublas, "NOTE [ cuBLAS workspace ]", persistent=True),
    ScratchRule("aten.baddbmm.default", "cuda", _cublas, "NOTE [ cuBLAS workspace ]", persistent=True),
)

#: Ops whose kernels are known to hold memory no rule models, per device: named in the output.
NOT_MODELLED: dict[str, tuple[str, ...]] = {
    "cuda": (
        "aten.convolution.default",  # cuDNN's algorithm workspace: chosen at run time
        "aten.convolution_backward.default",
        "aten._scaled_dot_product_efficient_attention.default",
        "aten._scaled_dot_product_flash_attention.default",
        "aten._cudnn_rnn.default",
    ),
    # a CUDA estimate traced on the CPU (no GPU here) takes oneDNN's LSTM: cuDNN's reserve space
    # for backward, which a GPU run saves, is not seen
    "cuda traced on cpu": ("aten.mkldnn_rnn_layer.default",),
}

_SCRATCH_INDEX: dict[tuple[str, str], ScratchRule] = {(r.op, r.device): r for r in SCRATCH_RULES}
_OUTPUT_INDEX: dict[tuple[str, str], OutputRule] = {(r.op, r.device): r for r in OUTPUT_RULES}


def find_scratch_rule(op: str, device: str) -> ScratchRule | None:
    """The scratch rule for an op's overload name on a device type, if any."""
    return _SCRATCH_INDEX.get((op, device))


def find_output_rule(op: str, device: str) -> OutputRule | None:
    """The output correction for an op's overload name on a device type, if any."""
    return _OUTPUT_INDEX.get((op, device))

