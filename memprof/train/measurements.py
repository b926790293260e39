"""What a training run measures besides the loss: peak memory per rank, autocast, and how well
each reversible sequence rebuilds its input (:func:`measure_reconstruction_error`)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import AmpMode
from .distributed import unwrap_model

__all__ = ["ReconstructionError", "autocast_context", "measure_reconstruction_error", "read_peak_memory",
           "reset_peak_memory"]


@dataclass
class ReconstructionError:
    """How far a reversible sequence's rebuilt input is from the real one (worst sequence).

    Attributes:
        rel: ``||inverse(forward(x)) - x|| / ||x||`` (L2 norms over the whole batch).
        max_abs: the largest absolute element error.
        sequences: how many reversible sequences were measured.
    """

    rel: float
    max_abs: float
    sequences: int


def _read_hwm() -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) * 1024 if m else None


# NOTE [ Peak memory per rank ]
# CUDA: torch.cuda.max_memory_allocated, reset at the start of each epoch: the tensors this
# rank's caching allocator handed out (not the allocator's reserve, not other processes).
# CPU: there is no allocator counter, so we read the process's resident-set high-water mark
# (VmHWM in /proc/self/status), which Linux lets a process reset by writing "5" to
# /proc/self/clear_refs: the peak RSS within the epoch ("rss_epoch"). It includes everything the
# process holds (Python, libraries, the dataset, the model): it is an upper bound on training
# memory, not the activation memory that `memprof profile` isolates. Where the reset is not
# allowed we fall back to getrusage's ru_maxrss, the peak since the process started ("rss_max").


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window for this process on ``device``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def read_peak_memory(device: torch.device) -> tuple[int, str]:
    """This process's peak memory since :func:`reset_peak_memory`, in bytes, and its source.

    Returns:
        ``(bytes, source)`` with source ``cuda_max_allocated``, ``rss_epoch`` or ``rss_max``.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    hwm = _read_hwm()
    if hwm is not None and Path("/proc/self/clear_refs").exists():
        return hwm, "rss_epoch"
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "rss_max"


def autocast_context(amp: str | AmpMode, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for the mode (bf16 or fp16) on ``device``'s type, or a null context."""
    mode = AmpMode(getattr(amp, "value", amp))
    if mode is AmpMode.OFF:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode is AmpMode.BF16 else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------- reconstruction


# NOTE [ Measuring the reconstruction error ]
# A reversible backward never sees the input of a sequence: it rebuilds it from the output,
# exactly only in exact arithmetic. Under autocast F and G compute in bf16/fp16 and the rebuilt
# input differs from the real one by their rounding, which can grow with depth. To measure what
# training really does, we run one batch forward (no grad) with hooks that keep each
# ReversibleSequence's input and output, then call the sequence's inverse on the output under
# the same autocast state (the engine replays it in backward too, NOTE [ Autocast state during
# recomputation ]) and with BatchNorm in the same mode: in training mode the BatchNorms use
# batch statistics, as in the recomputation, and fold nothing into their running statistics
# (frozen_batchnorm_stats, the engine's own switch). The RNG is forked so the measurement does
# not shift the training's random stream.


@contextlib.contextmanager
def _frozen_stats(model: nn.Module) -> Iterator[None]:
    from ..reversible._state import frozen_batchnorm_stats

    with frozen_batchnorm_stats(model):
        yield


def measure_reconstruction_error(
    model: nn.Module, x: torch.Tensor, amp: str | AmpMode = "off"
) -> ReconstructionError | None:
    """Rebuild every ReversibleSequence's input from its output and compare with the real input.

    The model's mode (train/eval), parameters, buffers and the RNG stream are left unchanged.

    Args:
        model: a model containing :class:`memprof.reversible.ReversibleSequence` modules.
        x: one input batch, on the model's device.
        amp: the autocast mode to run (and invert) under.

    Returns:
        The worst :class:`ReconstructionError` over the sequences, or None when the model has
        no reversible sequence.
    """
    from ..reversible import ReversibleSequence

    seqs = [m for m in unwrap_model(model).modules() if isinstance(m, ReversibleSequence) and len(m)]
    if not seqs:
        return None
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured[id(mod)] = (inputs[0].detach(), output.detach())

    handles = [s.register_forward_hook(hook) for s in seqs]
    ctx = autocast_context(amp, x.device)
    devices = [x.device] if x.is_cuda else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), _frozen_stats(model):
            with ctx:
                unwrap_model(model)(x)
            worst_rel, worst_abs = 0.0, 0.0
            for s in seqs:
                if id(s) not in captured:
                    continue
                x_in, y = captured[id(s)]
                with ctx:
                    x_rec = s.inverse(y)
                diff = (x_rec.double() - x_in.double())
                rel = float(diff.norm() / x_in.double().norm().clamp(min=1e-30))
                worst_rel = max(worst_rel, rel)
                worst_abs = max(worst_abs, float(diff.abs().max()))
    finally:
        for h in handles:
            h.remove()
    return ReconstructionError(worst_rel, worst_abs, len(captured))
