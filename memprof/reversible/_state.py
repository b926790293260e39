"""State that a recomputation must see exactly as the forward saw it: RNG, autocast, BatchNorm."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# NOTE [ RNG state for recomputation ]
# A reversible backward runs F and G a second time. Dropout (or any other RNG use) inside them
# must draw the very same numbers, or the rebuilt activations and the gradients are wrong.
# torch.utils.checkpoint stores the whole RNG state before every checkpointed region. We keep a
# state only when the region actually consumed randomness (the state is read before and after
# the region and kept only if it changed), and we keep it compactly:
# - CPU: the generator state is 5 KiB (mt19937), but a region rarely changes more than a few of
#   its bytes unless it drew many numbers: a region that draws fewer than 624 32-bit numbers
#   and does not cross a refill of mt19937's 624-word table changes only the position fields
#   (a few bytes); a larger draw (dropout on a big CPU tensor draws per element) rewrites the
#   table, about half of the 5 KiB. A chain of blocks therefore shares one RngLog: the latest
#   state in full, and per recorded region an undo entry that turns it into the one before:
#   the changed bytes (index, old byte: 4 bytes each) when few changed, else the whole
#   earlier state. Replaying region k walks a working copy down from the latest state, one
#   entry per step in backward's order. Host memory: 5 KiB per chain, plus per region that
#   consumed randomness a few bytes (small draws) and at most one full state (large draws,
#   never more than storing every state in full, as torch.utils.checkpoint does).
# - CUDA: each generator is 16 bytes (seed, offset); only a generator whose state the region
#   changed is kept (dropout on the GPU leaves the CPU generator alone, and vice versa).
# A deterministic block costs nothing. On replay the current state is saved, the recorded one
# set, the region run, and the current state restored, so backward leaves the user's RNG
# stream where it found it.


def _is_fake(t: torch.Tensor) -> bool:
    """True for FakeTensor / meta tensors, whose RNG and data cannot be read."""
    return t.device.type == "meta" or type(t).__name__ == "FakeTensor"


class RngLog:
    """The CPU generator states recorded by one chain: the latest in full, earlier ones as undo patches."""

    __slots__ = ("_at", "_cursor", "_end", "_undo")

    def __init__(self) -> None:
        self._end: torch.Tensor | None = None  # (5056,) uint8: the latest state recorded
        #: entry j-1 turns state j back into state j-1: a (2, n) int16 patch (byte index, old
        #: byte) when few bytes changed, else the whole earlier state (uint8), whichever is smaller
        self._undo: list[torch.Tensor] = []
        self._cursor: torch.Tensor | None = None  # a working copy, state number self._at
        self._at = -1

    def append(self, state: torch.Tensor) -> int:
        """Record ``state``; returns its number for :meth:`state`."""
        self._cursor, self._at = None, -1
        if self._end is None:
            self._end = state.clone()
            return 0
        end = self._end
        where = (end != state).nonzero().flatten()
        if 4 * where.numel() < end.numel():
            self._undo.append(torch.stack([where, end[where].long()]).to(torch.int16))
            end[where] = state[where]
        else:
            self._undo.append(end.clone())
            end.copy_(state)
        return len(self._undo)

    def state(self, k: int) -> torch.Tensor:
        """The recorded state number ``k`` (the log's own buffer: copy it to keep it).

        Walking from the latest state down costs one patch per step, so replaying the regions
        in backward's order (last first) costs one patch each.
        """
        assert self._end is not None and 0 <= k <= len(self._undo)
        if self._cursor is None or self._at < k:
            self._cursor, self._at = self._end.clone(), len(self._undo)
        cursor = self._cursor
        while self._at > k:
            undo = self._undo[self._at - 1]
            if undo.dtype == torch.uint8:
                cursor.copy_(undo)
            else:
                cursor[undo[0].long()] = undo[1].to(torch.uint8)
            self._at -= 1
        return cursor

    def nbytes_of(self, k: int) -> int:
        """Bytes that recording state ``k`` added to the log (the first pays the full state)."""
        if k == 0:
            return self._end.nbytes if self._end is not None else 0
        return self._undo[k - 1].nbytes

    def nbytes(self) -> int:
        """Bytes held by the log (not counting the working copy used while replaying)."""
        return sum(self.nbytes_of(k) for k in range(len(self._undo) + 1)) if self._end is not None else 0


class RngTape:
    """RNG states of the regions of one block that consumed randomness, keyed by region name.

    A tape records while the block runs forward and replays (:meth:`region` in a
    :meth:`replaying` context) while it is rebuilt in backward. Regions share the chain's
    :class:`RngLog`; a tape itself holds a log index and, on CUDA, 16 bytes per changed region.
    """

    __slots__ = ("_cuda_device", "_enabled", "_log", "_replaying", "states")

    def __init__(self, like: torch.Tensor | None = None, enabled: bool = True, log: RngLog | None = None) -> None:
        self._enabled = enabled and like is not None and not _is_fake(like)
        self._cuda_device = like.device if (like is not None and like.is_cuda) else None
        self._log = log if log is not None else RngLog()
        self._replaying = False
        #: region -> (number of its CPU state in the log or None, its CUDA state or None)
        self.states: dict[str, tuple[int | None, torch.Tensor | None]] = {}

    def _cuda_state(self) -> torch.Tensor | None:
        return torch.cuda.get_rng_state(self._cuda_device) if self._cuda_device is not None else None

    @contextlib.contextmanager
    def record(self, key: str) -> Iterator[None]:
        """Run a region; keep the RNG state from before it only if the region changed it."""
        if not self._enabled:
            yield
            return
        cpu, cuda = torch.get_rng_state(), self._cuda_state()
        yield
        cpu_after, cuda_after = torch.get_rng_state(), self._cuda_state()
        cpu_changed = not torch.equal(cpu, cpu_after)
        cuda_changed = cuda is not None and not torch.equal(cuda, cuda_after)  # type: ignore[arg-type]
        if cpu_changed or cuda_changed:
            self.states[key] = (self._log.append(cpu) if cpu_changed else None, cuda if cuda_changed else None)

    @contextlib.contextmanager
    def replay(self, key: str) -> Iterator[None]:
        """Run a region with the RNG state recorded for it, then restore the current state."""
        recorded = self.states.get(key)
        if recorded is None:
            yield
            return
        cpu_k, cuda = recorded
        current_cpu = torch.get_rng_state() if cpu_k is not None else None
        current_cuda = self._cuda_state() if cuda is not None else None
        if cpu_k is not None:
            torch.set_rng_state(self._log.state(cpu_k))
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self._cuda_device)
        try:
            yield
        finally:
            if current_cpu is not None:
                torch.set_rng_state(current_cpu)
            if current_cuda is not None:
                torch.cuda.set_rng_state(current_cuda, self._cuda_device)

    def region(self, key: str) -> contextlib.AbstractContextManager[None]:
        """:meth:`record` while running forward, :meth:`replay` inside :meth:`replaying`."""
        return self.replay(key) if self._replaying else self.record(key)

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Within, :meth:`region` replays what was recorded."""
        before, self._replaying = self._replaying, True
        try:
            yield
        finally:
            self._replaying = before

    def nbytes(self) -> int:
        """Host bytes this tape's regions added: its share of the chain's log, CUDA states."""
        total = 0
        for cpu_k, cuda in self.states.values():
            total += self._log.nbytes_of(cpu_k) if cpu_k is not None else 0
            total += cuda.nbytes if cuda is not None else 0
        return total


NULL_TAPE = RngTape(None, enabled=False)


# NOTE [ Autocast state during recomputation ]
# The autograd engine runs backward with autocast off. The recomputed F and G must run under
# the autocast state of the forward (same dtypes, same kernels) or the rebuilt inputs differ
# from the real ones by the rounding of another precision. The state is captured once per
# sequence forward and re-entered around the whole reversible backward.

def capture_autocast() -> list[dict[str, Any]]:
    """The autocast settings in force now, one entry per device type that has autocast on."""
    states = []
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            states.append(
                {
                    "device_type": device_type,
                    "dtype": torch.get_autocast_dtype(device_type),
                    "cache_enabled": torch.is_autocast_cache_enabled(),
                }
            )
    return states


@contextlib.contextmanager
def replay_autocast(states: list[dict[str, Any]]) -> Iterator[None]:
    """Re-enter the autocast settings captured by :func:`capture_autocast`."""
    with contextlib.ExitStack() as stack:
        for kwargs in states:
            stack.enter_context(torch.autocast(**kwargs))
        yield


# NOTE [ Module buffers during recomputation ]
# A module's forward may write its buffers: BatchNorm and InstanceNorm fold batch statistics
# into running_mean/running_var and count num_batches_tracked, a spectral norm advances its
# power iteration, a user module counts its calls or keeps a moving average (in place, or by
# rebinding the buffer attribute). The forward of a reversible block does that once, as the
# plain network does. The recomputation in backward must (a) see every buffer as the forward
# saw it, since the output may depend on it, and (b) leave every buffer exactly as it was
# (bit for bit: after any number of steps the buffers equal those of the reversible=False twin).
# The rule, for every module, not just BatchNorm:
# - Forward (BufferTape.record): the buffers of the block's modules are listed with their
#   identity and version counter. Normalisation layers (_NormBase: BatchNorm, SyncBatchNorm,
#   InstanceNorm) in training mode normalise with the statistics of their input, so their output
#   never depends on their running buffers: they are listed as written, without a copy. In eval
#   mode they only read them. Any other buffer is copied before the forward; after it, the copy
#   is kept only if the buffer was changed in place (version counter) or rebound (identity), so
#   a block that writes no buffer keeps nothing, and a call counter keeps 8 bytes.
# - Backward (BufferTape.standing_in): for the duration of the block's reverse step every written
#   buffer is replaced by a stand-in, a fresh copy of its value before the forward (or of its
#   current value for normalisation layers); the recomputation runs the very same code path as
#   the forward (running statistics included) and writes only into the stand-ins, and the real
#   buffer tensors are put back afterwards, untouched.
# (BatchNorm's running buffers are updated by the kernel without a version bump, which is why
# normalisation layers are recognised by type rather than by their version counters.)


def _writes_buffers_by_kind(module: nn.Module) -> bool:
    """Normalisation layers, whose forward writes running statistics it does not read in training."""
    return isinstance(module, nn.modules.batchnorm._NormBase)


class BufferTape:
    """The buffers one block's forward wrote, with their earlier values where the output may read them."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        #: (module, buffer name, value before the forward or None for normalisation layers)
        self.written: list[tuple[nn.Module, str, torch.Tensor | None]] = []

    @contextlib.contextmanager
    def record(self, block: nn.Module) -> Iterator[None]:
        """Run the block's forward inside; afterwards :attr:`written` lists what it wrote."""
        listed = []
        for m in block.modules():
            if not m._buffers:
                continue
            by_kind = _writes_buffers_by_kind(m)
            if by_kind and not m.training:
                continue
            for name, b in m._buffers.items():
                if b is not None:
                    listed.append((m, name, b, b._version, None if by_kind else b.clone()))
        yield
        self.written = [
            (m, name, before)
            for m, name, b, version, before in listed
            if before is None or m._buffers.get(name) is not b or b._version != version
        ]

    @contextlib.contextmanager
    def standing_in(self) -> Iterator[None]:
        """Within, the written buffers are copies (of their values before the forward); restored after."""
        real = []
        for m, name, before in self.written:
            current = m._buffers.get(name)
            real.append((m, name, current))
            source = before if before is not None else current
            m._buffers[name] = source.clone() if source is not None else None
        try:
            yield
        finally:
            for m, name, current in reversed(real):
                m._buffers[name] = current

    def nbytes(self) -> int:
        """Bytes of the earlier values kept."""
        return sum(b.nbytes for _, _, b in self.written if b is not None)


# NOTE [ BatchNorm statistics during recomputation ]
# (The engine now follows NOTE [ Module buffers during recomputation ]; this switch remains for
# callers that run an inverse outside the engine, e.g. the reconstruction-error measurement.)
# In training mode a BatchNorm normalises with the batch statistics and, as a side effect,
# folds them into running_mean/running_var and increments num_batches_tracked. The forward of
# a reversible block does that once, as a plain network would. Recomputing F and G in backward
# must normalise with the same batch statistics but must not fold them in a second time (a
# known defect of existing reversible libraries, whose running statistics drift from those of
# the plain network). During recomputation we therefore switch track_running_stats off on every
# BatchNorm of the block that is in training mode: F.batch_norm then receives no running
# buffers, normalises with batch statistics exactly as before, and updates nothing. In eval
# mode nothing is switched, since the running statistics are read, not written.

@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Within the block, training-mode BatchNorms use batch statistics but update nothing."""
    switched = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in switched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True
