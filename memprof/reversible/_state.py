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
# torch.utils.checkpoint stores the RNG state before every checkpointed region. We do the same,
# but keep a state only when the region actually consumed randomness: the state is read before
# and after the region and kept only if it changed. A deterministic block therefore costs no
# memory at all (the CPU generator state is 5 KiB, which over 64 blocks would otherwise be
# memory that grows with depth, the very thing a reversible network exists to avoid). On replay
# the current state is saved, the recorded one set, the region run, and the current state
# restored, so backward leaves the user's RNG stream where it found it.


def _is_fake(t: torch.Tensor) -> bool:
    """True for FakeTensor / meta tensors, whose RNG and data cannot be read."""
    return t.device.type == "meta" or type(t).__name__ == "FakeTensor"


class RngTape:
    """RNG states of the regions of one block that consumed randomness, keyed by region name."""

    __slots__ = ("_cuda_device", "_enabled", "states")

    def __init__(self, like: torch.Tensor | None = None, enabled: bool = True) -> None:
        self._enabled = enabled and like is not None and not _is_fake(like)
        self._cuda_device = like.device if (like is not None and like.is_cuda) else None
        self.states: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _get(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self._cuda_device) if self._cuda_device is not None else None
        return torch.get_rng_state(), cuda

    def _set(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self._cuda_device)

    @contextlib.contextmanager
    def record(self, key: str) -> Iterator[None]:
        """Run a region; keep the RNG state from before it only if the region changed it."""
        if not self._enabled:
            yield
            return
        before = self._get()
        yield
        after = self._get()
        changed = not torch.equal(before[0], after[0]) or (
            before[1] is not None and not torch.equal(before[1], after[1])  # type: ignore[arg-type]
        )
        if changed:
            self.states[key] = before

    @contextlib.contextmanager
    def replay(self, key: str) -> Iterator[None]:
        """Run a region with the RNG state recorded for it, then restore the current state."""
        state = self.states.get(key)
        if state is None:
            yield
            return
        current = self._get()
        self._set(state)
        try:
            yield
        finally:
            self._set(current)

    def nbytes(self) -> int:
        """Bytes held by the recorded states."""
        return sum(s.nbytes for pair in self.states.values() for s in pair if s is not None)


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


# NOTE [ BatchNorm statistics during recomputation ]
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
