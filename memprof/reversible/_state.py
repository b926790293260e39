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
# torch.utils.checkpoint stores the whole RNG state before every checkpointed region: 5 KiB of
# CPU generator state (mt19937) per region, memory that grows with depth, the very thing a
# reversible network exists to avoid. The CPU state cannot be stored compactly after the
# fact: dropout on a CPU tensor draws one number per element, so a region typically rewrites
# the generator's whole 624-word table, and the number of draws is not recorded anywhere.
# So a region of a ReversibleSequence draws from a seed of its own instead:
# - CPU: before the region a 64-bit seed is drawn from the CPU generator, the generator is
#   seeded with it, the region runs, and the generator is put back where it was just after
#   drawing the seed. If the region drew nothing (a deterministic block), the generator is put
#   back where it was before the seed, as if nothing happened, and nothing is kept; otherwise
#   the region's 8-byte seed is kept, and replaying it is seeding with it again. The user's
#   stream after the sequence therefore depends on which blocks drew numbers, not on how many.
#   Both modes of a sequence do this (reversible=False too), so the twins draw the same
#   numbers; only the masks differ from those of the same modules run outside a
#   ReversibleSequence (same distribution, other numbers).
# - CUDA: a generator's state is 16 bytes (seed, offset): it is kept as it is, and only when
#   the region changed it (dropout on the GPU leaves the CPU generator alone, and vice versa).
# On replay the current state is saved, the recorded seed or state set, the region run, and
# the current state restored, so backward leaves the user's RNG stream where it found it.
# Under FakeTensorMode (memprof's estimates) nothing is recorded or reseeded.


def _is_fake(t: torch.Tensor) -> bool:
    """True for FakeTensor / meta tensors, whose RNG and data cannot be read."""
    return t.device.type == "meta" or type(t).__name__ == "FakeTensor"


_SEED_BOUND = 2**62


class RngTape:
    """RNG seeds (CPU) and states (CUDA) of the regions of one block that consumed randomness.

    A tape records while the block runs forward and replays (:meth:`region` inside a
    :meth:`replaying` context) while it is rebuilt in backward; see
    NOTE [ RNG state for recomputation ].
    """

    __slots__ = ("_cuda_device", "_enabled", "_replaying", "states")

    def __init__(self, like: torch.Tensor | None = None, enabled: bool = True) -> None:
        self._enabled = enabled and like is not None and not _is_fake(like)
        self._cuda_device = like.device if (like is not None and like.is_cuda) else None
        self._replaying = False
        #: region -> (its CPU seed or None, its CUDA state or None)
        self.states: dict[str, tuple[int | None, torch.Tensor | None]] = {}

    def _cuda_state(self) -> torch.Tensor | None:
        return torch.cuda.get_rng_state(self._cuda_device) if self._cuda_device is not None else None

    @contextlib.contextmanager
    def record(self, key: str) -> Iterator[None]:
        """Run a region on a seed of its own; keep the seed (and the CUDA state) only if used."""
        if not self._enabled:
            yield
            return
        cuda = self._cuda_state()
        before = torch.get_rng_state()
        seed = int(torch.randint(_SEED_BOUND, (), dtype=torch.int64, device="cpu"))
        after_seed = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        seeded = torch.get_rng_state()
        try:
            yield
        finally:
            cpu_used = not torch.equal(seeded, torch.get_rng_state())
            torch.set_rng_state(after_seed if cpu_used else before)
        cuda_used = cuda is not None and not torch.equal(cuda, self._cuda_state())  # type: ignore[arg-type]
        if cpu_used or cuda_used:
            self.states[key] = (seed if cpu_used else None, cuda if cuda_used else None)

    @contextlib.contextmanager
    def replay(self, key: str) -> Iterator[None]:
        """Run a region with the seed and state recorded for it, then restore the current state."""
        recorded = self.states.get(key)
        if recorded is None:
            yield
            return
        seed, cuda = recorded
        current_cpu = torch.get_rng_state() if seed is not None else None
        current_cuda = self._cuda_state() if cuda is not None else None
        if seed is not None:
            torch.default_generator.manual_seed(seed)
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
        """Bytes of state kept: 8 per CPU seed, 16 per CUDA generator state."""
        return sum((8 if seed is not None else 0) + (cuda.nbytes if cuda is not None else 0) for seed, cuda in self.states.values())


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
#   current value for normalisation layers); the recomputation writes only into the stand-ins,
#   and the real buffer tensors are put back afterwards, untouched. BatchNorm, the common
#   case, needs no copy: its track_running_stats is switched off for the step, so F.batch_norm
#   gets no running buffers, normalises with the batch statistics exactly as the forward did,
#   and updates nothing (NOTE [ BatchNorm statistics during recomputation ]). InstanceNorm
#   cannot be switched that way (it passes its running buffers to the kernel whatever the
#   flag says), so it gets stand-ins like every other module.
# (BatchNorm's running buffers are updated by the kernel without a version bump, which is why
# normalisation layers are recognised by type rather than by their version counters.)


def _writes_buffers_by_kind(module: nn.Module) -> bool:
    """Normalisation layers, whose forward writes running statistics it does not read in training."""
    return isinstance(module, nn.modules.batchnorm._NormBase)


class BufferTape:
    """The buffers one block's forward wrote, with their earlier values where the output may read them."""

    __slots__ = ("switched", "written")

    def __init__(self) -> None:
        #: (module, buffer name, value before the forward or None for normalisation layers)
        self.written: list[tuple[nn.Module, str, torch.Tensor | None]] = []
        #: training-mode BatchNorms that track running statistics (see below)
        self.switched: list[nn.Module] = []

    @contextlib.contextmanager
    def record(self, block: nn.Module) -> Iterator[None]:
        """Run the block's forward inside; afterwards :attr:`written` lists what it wrote."""
        listed = []
        switched = []
        for m in block.modules():
            if not m._buffers:
                continue
            by_kind = _writes_buffers_by_kind(m)
            if by_kind and not m.training:
                continue
            if by_kind and isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.track_running_stats:
                    switched.append(m)
                continue
            for name, b in m._buffers.items():
                if b is not None:
                    listed.append((m, name, b, b._version, None if by_kind else b.clone()))
        yield
        self.switched = switched
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
        for m in self.switched:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in self.switched:
                m.track_running_stats = True
            for m, name, current in reversed(real):
                m._buffers[name] = current

    def nbytes(self) -> int:
        """Bytes of the earlier values kept."""
        return sum(b.nbytes for _, _, b in self.written if b is not None)


# NOTE [ BatchNorm statistics during recomputation ]
# (The engine applies this switch through BufferTape, NOTE [ Module buffers during
# recomputation ]; frozen_batchnorm_stats serves callers that run an inverse outside the
# engine, e.g. the reconstruction-error measurement.)
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
