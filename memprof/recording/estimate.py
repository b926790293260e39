"""Estimation without allocating: fake models, and the CUDA caching allocator's rounding rules.

An estimate runs the very same training step as a measurement, with the same trackers, but on
a copy of the model whose parameters and buffers are ``FakeTensor``\\ s (shapes, dtypes and
devices, no data): every op produces fake outputs with fake storages that are sized, saved and
freed exactly as real ones would be. Nothing is allocated, so VGG-19 at batch 8192 takes
seconds. On the CPU the storage bytes of an estimate equal those of a measurement byte for
byte (tests check it); what an estimate cannot see is memory that no tensor owns.

For a CUDA target the stream of storage allocations and frees is replayed through
:class:`CudaCachingAllocatorModel`, a model of PyTorch's caching allocator
(``c10/cuda/CUDACachingAllocator.cpp``, default settings):

- every request is rounded up to a multiple of 512 bytes (at least 512; a 0-byte request
  allocates nothing);
- requests of at most 1 MiB are served from the *small pool*, whose segments are 2 MiB;
  larger requests from the *large pool*, whose segments are 20 MiB for requests under 10 MiB
  and otherwise the request rounded up to a multiple of 2 MiB;
- a request takes the smallest cached free block that fits (ties: lowest address); the block
  is split when the remainder is at least 512 bytes (small pool) or more than 1 MiB (large
  pool), otherwise the whole block is handed out and counted as allocated;
- freed blocks stay cached in their segment and merge with free neighbours; nothing is given
  back to the driver (no ``empty_cache``).

Not modelled: cuDNN and cuBLAS workspaces, the CUDA context (hundreds of MiB outside the
allocator), ``PYTORCH_CUDA_ALLOC_CONF`` options (``expandable_segments``,
``max_split_size_mb``, ``roundup_power2_divisions``), several streams, and the order in which
the model's own tensors were allocated before the step (it affects fragmentation, hence the
reserved figure, not the allocated one).
"""

from __future__ import annotations

import bisect
import copy
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "CudaCachingAllocatorModel",
    "NOT_MODELLED_CUDA",
    "make_fake_model",
    "round_cuda_request",
    "simulate_cuda_allocator",
]

KMIN_BLOCK = 512
KSMALL_SIZE = 1 << 20
KSMALL_BUFFER = 2 << 20
KLARGE_BUFFER = 20 << 20
KMIN_LARGE_ALLOC = 10 << 20
KROUND_LARGE = 2 << 20

#: What the CUDA estimate leaves out (printed with every CUDA estimate and in the report).
NOT_MODELLED_CUDA = (
    "cuDNN/cuBLAS workspaces and other kernel scratch memory",
    "the CUDA context (outside the caching allocator)",
    "PYTORCH_CUDA_ALLOC_CONF options (expandable segments, max_split_size_mb, power-of-2 rounding)",
    "multiple streams; the allocation order of tensors created before the step (affects reserved only)",
)


def round_cuda_request(nbytes: int) -> int:
    """The block size the caching allocator hands out for a request of ``nbytes`` (before splitting)."""
    if nbytes <= 0:
        return 0
    if nbytes < KMIN_BLOCK:
        return KMIN_BLOCK
    return KMIN_BLOCK * ((nbytes + KMIN_BLOCK - 1) // KMIN_BLOCK)


def _segment_size(rounded: int) -> int:
    if rounded <= KSMALL_SIZE:
        return KSMALL_BUFFER
    if rounded < KMIN_LARGE_ALLOC:
        return KLARGE_BUFFER
    return KROUND_LARGE * ((rounded + KROUND_LARGE - 1) // KROUND_LARGE)


@dataclass
class _Block:
    addr: int
    size: int
    segment: int
    small: bool
    free: bool = True


class CudaCachingAllocatorModel:
    """A model of the CUDA caching allocator's block bookkeeping (one stream, default settings)."""

    def __init__(self) -> None:
        self._blocks: dict[int, _Block] = {}
        self._ends: dict[int, int] = {}  # end address -> block address
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # pool -> sorted (size, addr)
        self._segments: dict[int, tuple[int, int]] = {}  # id -> (base, size)
        self._next_base = 0
        self.allocated = 0
        self.reserved = 0

    def _insert(self, b: _Block) -> None:
        self._blocks[b.addr] = b
        self._ends[b.addr + b.size] = b.addr
        if b.free:
            bisect.insort(self._free[b.small], (b.size, b.addr))

    def _remove(self, b: _Block) -> None:
        del self._blocks[b.addr]
        del self._ends[b.addr + b.size]
        if b.free:
            lst = self._free[b.small]
            lst.pop(bisect.bisect_left(lst, (b.size, b.addr)))

    def malloc(self, nbytes: int) -> int | None:
        """Allocate; returns the block address (None for 0 bytes)."""
        size = round_cuda_request(nbytes)
        if size == 0:
            return None
        small = size <= KSMALL_SIZE
        lst = self._free[small]
        i = bisect.bisect_left(lst, (size, -1))
        if i < len(lst):
            block = self._blocks[lst[i][1]]
        else:
            seg_size = _segment_size(size)
            seg = len(self._segments)
            base = self._next_base
            self._next_base += seg_size + KROUND_LARGE  # segments never touch
            self._segments[seg] = (base, seg_size)
            self.reserved += seg_size
            block = _Block(base, seg_size, seg, small)
            self._insert(block)
        self._remove(block)
        remaining = block.size - size
        split = remaining >= KMIN_BLOCK if small else remaining > KSMALL_SIZE
        if split:
            rest = _Block(block.addr + size, remaining, block.segment, small, free=True)
            block.size = size
            self._insert(rest)
        block.free = False
        self._insert(block)
        self.allocated += block.size
        return block.addr

    def free(self, addr: int | None) -> None:
        """Return a block to its pool, merging it with free neighbours in its segment."""
        if addr is None:
            return
        block = self._blocks[addr]
        self.allocated -= block.size
        self._remove(block)
        block.free = True
        nxt = self._blocks.get(block.addr + block.size)
        if nxt is not None and nxt.free and nxt.segment == block.segment:
            self._remove(nxt)
            block.size += nxt.size
        prev_addr = self._ends.get(block.addr)
        prev = self._blocks.get(prev_addr) if prev_addr is not None else None
        if prev is not None and prev.free and prev.segment == block.segment:
            self._remove(prev)
            prev.size += block.size
            block = prev
        self._insert(block)


def simulate_cuda_allocator(lives: list[tuple[int, int | None, int]], n_events: int) -> tuple[np.ndarray, np.ndarray]:
    """Replay storage lives through :class:`CudaCachingAllocatorModel`.

    Args:
        lives: ``(start_event, end_event or None, nbytes)`` of every storage life.
        n_events: the length of the event clock (the timelines are this long).

    Returns:
        ``(allocated, reserved)``: bytes after every event.
    """
    events: list[tuple[int, int, int]] = []  # (time, order, life index); frees before allocs at a tie
    for i, (start, end, _) in enumerate(lives):
        events.append((start, 1, i))
        if end is not None:
            events.append((end, 0, i))
    events.sort()
    model = CudaCachingAllocatorModel()
    addrs: dict[int, int | None] = {}
    allocated = np.zeros(n_events, dtype=np.int64)
    reserved = np.zeros(n_events, dtype=np.int64)
    last = 0
    for t, kind, i in events:
        if t > last:
            allocated[last:t] = model.allocated
            reserved[last:t] = model.reserved
            last = t
        if kind == 1:
            addrs[i] = model.malloc(lives[i][2])
        else:
            model.free(addrs.pop(i))
    allocated[last:] = model.allocated
    reserved[last:] = model.reserved
    return allocated, reserved


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
