"""A model of PyTorch's CUDA caching allocator: what ``max_memory_allocated`` and ``_reserved`` become.

Fed a sequence of allocations and frees (the storages of a traced step, plus kernel workspaces),
:class:`CudaCachingAllocatorModel` hands out blocks the way ``c10/cuda/CUDACachingAllocator.cpp``
does with one stream and default settings, so its ``allocated`` and ``reserved`` counters follow
``torch.cuda.memory_allocated`` and ``memory_reserved``. The rules, from the allocator's
documentation comments and source (read, not copied):

- every request is rounded up to a multiple of 512 bytes (at least 512; 0 bytes allocate
  nothing); ``allocated`` counts the rounded size, or the whole block when it is not split;
- requests of at most 1 MiB come from the *small pool*, larger ones from the *large pool*;
- a request takes the smallest cached free block of its pool that fits (ties: lowest address);
  the block is split when the remainder is at least 512 bytes (small pool) or more than 1 MiB
  (large pool); otherwise the whole block is handed out;
- without a fitting block a new segment is reserved: 2 MiB for the small pool, 20 MiB for
  requests under 10 MiB, otherwise the request rounded up to 2 MiB;
- freed blocks stay cached and merge with free neighbours of the same segment; segments are
  returned to the driver only when a reservation would exceed the device's capacity (then every
  wholly free segment is released and the reservation retried; failing again is an OOM);
- ``expandable_segments:True`` (``PYTORCH_CUDA_ALLOC_CONF``): each pool has one segment that
  grows at its end by pages of 2 MiB (small pool) or 20 MiB (large pool), extending a free block
  that ends the segment, so memory freed at the end is reused by larger requests instead of
  stranding slivers (Note [Expandable Segments] in the allocator's source).

Not modelled: several streams (blocks are per stream), ``max_split_size_mb``,
``roundup_power2_divisions``, ``garbage_collection_threshold``, CUDA graphs' private pools,
and the CUDA context (hundreds of MiB outside the allocator).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NOT_MODELLED_CUDA",
    "CudaCachingAllocatorModel",
    "CudaOutOfMemory",
    "round_cuda_request",
    "simulate_cuda_allocator",
]

KMIN_BLOCK = 512
KSMALL_SIZE = 1 << 20
KSMALL_BUFFER = 2 << 20
KLARGE_BUFFER = 20 << 20
KMIN_LARGE_ALLOC = 10 << 20
KROUND_LARGE = 2 << 20

#: What a CUDA estimate leaves out (printed with every CUDA estimate).
NOT_MODELLED_CUDA = (
    "cuDNN convolution and attention workspaces (chosen by cuDNN at run time)",
    "the CUDA context (outside the caching allocator)",
    "PYTORCH_CUDA_ALLOC_CONF options other than expandable_segments",
    "multiple streams",
)


class CudaOutOfMemory(RuntimeError):
    """A reservation the modelled device cannot hold, even after releasing cached segments."""


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
    """The caching allocator's block bookkeeping for one device and one stream.

    Args:
        expandable_segments: model ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``.
        capacity: bytes the device can reserve (None: unlimited). A reservation beyond it first
            releases every wholly free segment, as the allocator does before reporting an OOM.

    Example::

        m = CudaCachingAllocatorModel()
        a = m.malloc(1000)        # 1024 B allocated from a new 2 MiB small-pool segment
        m.free(a)                 # allocated 0, reserved still 2 MiB
    """

    def __init__(self, expandable_segments: bool = False, capacity: int | None = None) -> None:
        self.expandable_segments = expandable_segments
        self.capacity = capacity
        self._blocks: dict[int, _Block] = {}
        self._ends: dict[int, int] = {}  # end address -> block address
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # pool -> sorted (size, addr)
        self._segments: dict[int, list[int]] = {}  # id -> [base, size]
        self._expandable: dict[bool, int] = {}  # pool -> its expandable segment's id
        self._next_base = 0
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0

    # ---- free-list bookkeeping -------------------------------------------------------------
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

    def _reserve(self, nbytes: int) -> None:
        if self.capacity is not None and self.reserved + nbytes > self.capacity:
            self.release_cached()
            if self.reserved + nbytes > self.capacity:
                raise CudaOutOfMemory(
                    f"reserving {nbytes} B more with {self.reserved} B reserved exceeds the capacity {self.capacity} B")
        self.reserved += nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _new_segment(self, size: int, small: bool) -> _Block:
        seg_size = _segment_size(size)
        self._reserve(seg_size)
        seg = len(self._segments) + 1
        base = self._next_base
        self._next_base += seg_size + KROUND_LARGE  # segments never touch
        self._segments[seg] = [base, seg_size]
        block = _Block(base, seg_size, seg, small)
        self._insert(block)
        return block

    def _grow_expandable(self, size: int, small: bool) -> _Block:
        """Map pages at the end of the pool's expandable segment until a free block of ``size`` ends it."""
        page = KSMALL_BUFFER if small else KLARGE_BUFFER
        seg = self._expandable.get(small)
        if seg is None:
            seg = len(self._segments) + 1
            self._segments[seg] = [self._next_base, 0]
            self._next_base += 1 << 48  # the whole address range stays this segment's
            self._expandable[small] = seg
        base, mapped = self._segments[seg]
        end = base + mapped
        last_addr = self._ends.get(end)
        last = self._blocks.get(last_addr) if last_addr is not None else None
        tail = last.size if last is not None and last.free else 0
        extra = -(-(size - tail) // page) * page
        self._reserve(extra)
        self._segments[seg][1] = mapped + extra
        if tail:
            assert last is not None
            self._remove(last)
            last.size += extra
            self._insert(last)
            return last
        block = _Block(end, extra, seg, small)
        self._insert(block)
        return block

    # ---- the allocator's interface ---------------------------------------------------------
    def malloc(self, nbytes: int) -> int | None:
        """Allocate; returns the block address (None for 0 bytes).

        Raises:
            CudaOutOfMemory: when a capacity is set and the request cannot be reserved.
        """
        size = round_cuda_request(nbytes)
        if size == 0:
            return None
        small = size <= KSMALL_SIZE
        lst = self._free[small]
        i = bisect.bisect_left(lst, (size, -1))
        if i < len(lst):
            block = self._blocks[lst[i][1]]
        elif self.expandable_segments:
            block = self._grow_expandable(size, small)
        else:
            block = self._new_segment(size, small)
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
        self.peak_allocated = max(self.peak_allocated, self.allocated)
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

    def release_cached(self) -> None:
        """Give every wholly free segment back to the driver (``torch.cuda.empty_cache``).

        An expandable segment gives back its free pages at the end.
        """
        for seg, (base, size) in list(self._segments.items()):
            block = self._blocks.get(base)
            if seg in self._expandable.values():
                end_addr = self._ends.get(base + size)
                tail = self._blocks.get(end_addr) if end_addr is not None else None
                if tail is not None and tail.free:
                    page = KSMALL_BUFFER if tail.small else KLARGE_BUFFER
                    cut = (tail.size // page) * page if tail.addr != base else tail.size
                    cut = min(cut, size)
                    if cut:
                        self._remove(tail)
                        tail.size -= cut
                        if tail.size:
                            self._insert(tail)
                        self._segments[seg][1] -= cut
                        self.reserved -= cut
                continue
            if block is not None and block.free and block.size == size:
                self._remove(block)
                del self._segments[seg]
                self.reserved -= size


def simulate_cuda_allocator(
    lives: list[tuple[int, int | None, int]],
    n_events: int,
    *,
    transient: list[tuple[int, int]] | None = None,
    expandable_segments: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay storage lives (and kernel workspaces) through :class:`CudaCachingAllocatorModel`.

    Args:
        lives: ``(start_event, end_event or None, nbytes)`` of every storage life.
        n_events: the length of the event clock (the timelines are this long).
        transient: ``(event, nbytes)`` of workspaces allocated after the allocations of that
            event and freed right away (a kernel's scratch); they count towards the peaks.
        expandable_segments: as :class:`CudaCachingAllocatorModel`.

    Returns:
        ``(allocated, reserved)``: bytes at every event, the highest reached during it.
    """
    events: list[tuple[int, int, int]] = []  # (time, order, index); frees before allocs at a tie
    for i, (start, end, _) in enumerate(lives):
        events.append((start, 1, i))
        if end is not None:
            events.append((end, 0, i))
    for j, (t, _) in enumerate(transient or ()):
        events.append((t, 2, j))  # after the allocations of the same event
    events.sort()
    model = CudaCachingAllocatorModel(expandable_segments=expandable_segments)
    addrs: dict[int, int | None] = {}
    allocated = np.zeros(n_events, dtype=np.int64)
    reserved = np.zeros(n_events, dtype=np.int64)
    last, hi_a, hi_r = 0, 0, 0
    for t, kind, i in events:
        if t > last:
            allocated[last] = max(hi_a, model.allocated)
            reserved[last] = max(hi_r, model.reserved)
            allocated[last + 1:t] = model.allocated
            reserved[last + 1:t] = model.reserved
            last, hi_a, hi_r = t, 0, 0
        if kind == 1:
            addrs[i] = model.malloc(lives[i][2])
        elif kind == 0:
            model.free(addrs.pop(i))
        else:
            addr = model.malloc(transient[i][1])  # type: ignore[index]
            hi_a, hi_r = max(hi_a, model.allocated), max(hi_r, model.reserved)
            model.free(addr)
    if last < n_events:
        allocated[last] = max(hi_a, model.allocated)
        reserved[last] = max(hi_r, model.reserved)
        allocated[last + 1:] = model.allocated
        reserved[last + 1:] = model.reserved
    return allocated, reserved
