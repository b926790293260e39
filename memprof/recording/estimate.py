"""Estimation without allocating: fake models whose kernels hold what the real device's hold.

An estimate runs the very same training step as a measurement, with the same trackers, but on
a copy of the model whose parameters and buffers are ``FakeTensor``\\ s (shapes, dtypes and
devices, no data): every op produces fake outputs with fake storages that are sized, saved and
freed as real ones would be. Nothing is allocated, so VGG-19 at batch 8192 takes seconds.

Fake execution dispatches like the device it stands for: a fake CPU tensor reports device
``cpu``, so composite ops take the CPU's branches (``nn.LSTM`` -> oneDNN's ``mkldnn_rnn_layer``,
``scaled_dot_product_attention`` -> the CPU flash kernel), and only the kernels themselves are
replaced by meta kernels. Where a meta kernel's outputs differ from the real kernel's, and for
the scratch a kernel holds inside itself, :class:`DeviceKernels` applies the rules of
:mod:`memprof.recording.workspace` (NOTE [ What an estimate adds to the fake step ]).

For a CUDA target the allocations and frees are replayed through the caching-allocator model of
:mod:`memprof.recording.cuda_allocator` (re-exported here).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .cuda_allocator import (
    NOT_MODELLED_CUDA,
    CudaCachingAllocatorModel,
    CudaOutOfMemory,
    round_cuda_request,
    simulate_cuda_allocator,
)
from .tensors import out_tensors, storage_keys, storages, tensors_in
from .workspace import NOT_MODELLED, find_output_rule, find_scratch_rule

__all__ = [
    "NOT_MODELLED_CUDA",
    "CudaCachingAllocatorModel",
    "CudaOutOfMemory",
    "DeviceKernels",
    "KernelScratch",
    "make_fake_model",
    "round_cuda_request",
    "simulate_cuda_allocator",
]


# NOTE [ What an estimate adds to the fake step ]
# DeviceKernels is a dispatch mode entered between FakeTensorMode (below) and the storage
# tracker (above), so every op the tracker sees passes through it:
# 1. outputs a meta kernel sizes differently from the real kernel are replaced by fake tensors
#    of the real size before the tracker and autograd see them (the oneDNN LSTM workspace that
#    autograd saves): tensor-owned bytes and saved bytes then equal a real run's;
# 2. for an op with a scratch rule it records (the tracker's clock before the op, the bytes of
#    the op's new outputs, the scratch bytes): inside the op the allocator held the bytes live
#    before it, its outputs and the scratch at once. The estimated step peak is the larger of
#    the tensor-owned peak and every op's "before + outputs + scratch"; a CUDA estimate replays
#    the scratch as an allocation right after the op's outputs, freed at once;
# 3. ops known to hold memory no rule models on the target device are counted, and the
#    estimate names them with the bytes at stake (their inputs' and outputs' size).
@dataclass
class KernelScratch:
    """One op call's memory beyond the tensors it leaves behind."""

    clock: int  #: the tracker's clock before the op (live bytes then: ``timeline.total[clock]``)
    new_outputs: int  #: bytes of storages the op created
    n_outputs: int  #: how many storages it created (the tracker ticks once for each)
    scratch: int  #: bytes the rule gives
    op: str
    persistent: bool = False


class DeviceKernels(TorchDispatchMode):
    """Make a fake step hold what the target device's kernels hold (NOTE [ What an estimate adds ... ]).

    Args:
        device_type: the device the estimate stands for (``cpu`` or ``cuda``).
        trace_device_type: the device the fake tensors report (``cpu`` when a CUDA estimate is
            traced without a GPU: then output corrections for CUDA kernels cannot apply).

    Attributes:
        scratch: every op call with scratch, in order.
        unmodelled: op -> [calls, largest call's argument and output bytes] for ops whose
            memory the target device's kernels hold and no rule models.
        approximations: one line per approximation applied (a float32 rule used for bfloat16).
    """

    def __init__(self, device_type: str = "cpu", trace_device_type: str | None = None) -> None:
        super().__init__()
        self.device_type = device_type
        self.trace_device_type = trace_device_type or device_type
        self.scratch: list[KernelScratch] = []
        self.unmodelled: dict[str, list[int]] = {}
        self.approximations: set[str] = set()
        self._clock: Callable[[], int] | None = None
        self._seen_persistent: set[str] = set()
        self._rules: dict[Any, tuple[Any, Any, bool]] = {}

    def bind(self, tracker: Any) -> None:
        """Read the storage tracker's clock, so scratch is placed on its timeline."""
        self._clock = lambda: tracker.clock

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        rules = self._rules.get(func)
        if rules is None:
            name = str(func)
            out_rule = find_output_rule(name, self.device_type) if self.trace_device_type == self.device_type else None
            unmodelled = name in NOT_MODELLED.get(self.device_type, ())
            if self.trace_device_type != self.device_type:
                unmodelled |= name in NOT_MODELLED.get(f"{self.device_type} traced on {self.trace_device_type}", ())
            rules = self._rules[func] = (out_rule, find_scratch_rule(name, self.device_type), unmodelled)
        out_rule, scratch_rule, unmodelled = rules
        clock = self._clock() if self._clock is not None else 0
        out = func(*args, **kwargs)
        if out_rule is None and scratch_rule is None and not unmodelled:
            return out
        if out_rule is not None:
            out = out_rule.fix(args, kwargs, out)
            if any(isinstance(a, torch.Tensor) and a.dtype != torch.float32 and a.is_floating_point() for a in args[:1]):
                self.approximations.add(f"{out_rule.op}: the float32 size is used for {args[0].dtype} (an upper bound)")
        new_bytes, n_new = _new_storage_bytes(args, kwargs, out)
        if scratch_rule is not None:
            if scratch_rule.persistent:
                if scratch_rule.op in self._seen_persistent:
                    return out
                self._seen_persistent.add(scratch_rule.op)
            nbytes = int(scratch_rule.bytes(args, kwargs, out))
            if nbytes > 0:
                self.scratch.append(KernelScratch(clock, new_bytes, n_new, nbytes, str(func), scratch_rule.persistent))
        if unmodelled:
            at_stake = new_bytes + sum(int(st.nbytes()) for st, _ in storages(tensors_in(args)))
            entry = self.unmodelled.setdefault(str(func), [0, 0])
            entry[0] += 1
            entry[1] = max(entry[1], at_stake)
        return out

    # ---- results -----------------------------------------------------------------------------
    def peak_inside_ops(self, total: np.ndarray, start: int = 0, end: int | None = None) -> tuple[int, KernelScratch | None]:
        """The highest "live before + outputs + scratch" of an op between two clock values.

        Returns:
            ``(bytes, the op's record)``, ``(0, None)`` when no op with scratch ran there.
        """
        best, where = 0, None
        stop = len(total) - 1 if end is None else end
        for k in self.scratch:
            if k.persistent or not start <= k.clock <= stop:
                continue
            value = int(total[k.clock]) + k.new_outputs + k.scratch
            if value > best:
                best, where = value, k
        return best, where

    def transient_allocations(self) -> list[tuple[int, int]]:
        """``(event, bytes)`` of every temporary workspace, for the CUDA allocator model."""
        return [(k.clock + k.n_outputs, k.scratch) for k in self.scratch if not k.persistent]

    def persistent_lives(self) -> list[tuple[int, None, int]]:
        """Storage lives of workspaces kept for the rest of the run (cuBLAS handles)."""
        return [(k.clock + k.n_outputs, None, k.scratch) for k in self.scratch if k.persistent]

    def notes(self) -> list[str]:
        """One line per op whose memory is not modelled, and per approximation."""
        from ..units import format_bytes

        lines = [
            f"not modelled: the workspace of {op} ({calls} calls; largest call's tensors "
            f"{format_bytes(at_stake)})" for op, (calls, at_stake) in sorted(self.unmodelled.items())
        ]
        return lines + sorted(self.approximations)


def _new_storage_bytes(args: Any, kwargs: Any, out: Any) -> tuple[int, int]:
    """Bytes and count of the output storages that are not among the inputs' storages."""
    seen = storage_keys(args, kwargs)
    total, count = 0, 0
    for st, key in storages(out_tensors(out)):
        if key not in seen:
            seen.add(key)
            total += int(st.nbytes())
            count += 1
    return total, count


def make_fake_model(
    model: nn.Module, mode: torch._subclasses.fake_tensor.FakeTensorMode, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are fake tensors on ``device``.

    Floating-point parameters and buffers take ``dtype``; others keep theirs (as ``Module.to``).
    The real model is not touched and no real memory is allocated for the copy's tensors.

    Returns:
        The fake copy (same class, same structure, same requires_grad flags).
    """
    memo: dict[int, torch.Tensor] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in memo:
            continue
        fake = mode.from_tensor(t.detach())
        with mode:
            fake = fake.to(device=device, dtype=dtype if fake.is_floating_point() else fake.dtype)
        if isinstance(t, nn.Parameter):
            fake = nn.Parameter(fake, requires_grad=t.requires_grad)
        memo[id(t)] = fake
    return copy.deepcopy(model, memo)  # type: ignore[arg-type]
