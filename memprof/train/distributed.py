"""Distributed data parallel: torchrun environment, process group, sampler, DDP wrap, collectives.

``torchrun --nproc_per_node N -m memprof train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`detect_dist_env` reads them and
:func:`init_distributed` joins the group (gloo on the CPU, NCCL on CUDA). Without those variables
everything here degrades to a single process: the collectives return their input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..validation import UsageError

__all__ = [
    "DistEnv",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "build_sampler",
    "detect_dist_env",
    "init_distributed",
    "shutdown_distributed",
    "unwrap_model",
    "wrap_model",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size, local rank (its GPU on the node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name}={raw!r} is not an integer") from None


def detect_dist_env() -> DistEnv:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (a single process when absent).

    Raises:
        UsageError: for malformed values (non-integers, a rank outside the world).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistEnv(rank, world, local)


def init_distributed(env: DistEnv, device_type: str) -> torch.device:
    """Join the process group (when ``env`` has several processes) and pick this rank's device.

    Args:
        env: from :func:`detect_dist_env`.
        device_type: ``"cpu"`` (gloo backend) or ``"cuda"`` (NCCL backend, one GPU per local rank).

    Returns:
        The device this process computes on (``cuda:LOCAL_RANK`` or ``cpu``).

    Raises:
        UsageError: when CUDA is asked for with more local ranks than GPUs.
    """
    if device_type == "cuda":
        n = torch.cuda.device_count()
        if env.local_rank >= n:
            raise UsageError(f"LOCAL_RANK={env.local_rank} but only {n} CUDA device(s) are visible")
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device("cpu")
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "rank": env.rank, "world_size": env.world_size}
        if device_type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return device


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


# NOTE [ DDP and reversible sequences ]
# DDP reduces a parameter's gradient when autograd accumulates it (a hook on the
# parameter's AccumulateGrad). ReversibleSequence passes its parameters to its autograd
# Function as inputs and returns their gradients from backward, so each parameter is
# accumulated exactly once per backward, like any layer's: no "marked ready twice", and
# no need for find_unused_parameters (which would cost an extra graph traversal every
# step). The recomputation inside backward uses torch.autograd.grad with explicit inputs,
# which never touches .grad and so never fires DDP's hooks. tests/test_distributed.py
# checks this, and that two ranks end with the parameters of one process.


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when running distributed, else return it.

    Args:
        model: the model, already on ``device``.
        env: this process's place in the group.
        device: its device (a CUDA device becomes DDP's single ``device_ids`` entry).

    Returns:
        The DDP wrapper, or ``model`` itself in a single process.
    """
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def build_sampler(dataset: Dataset, env: DistEnv, shuffle: bool, seed: int) -> Sampler[int]:
    """A sampler giving this rank its share of ``dataset``.

    Training (``shuffle=True``) uses DistributedSampler in every case, a single process
    included (one replica): the shuffle order then depends only on ``seed`` and the epoch set
    with ``set_epoch``, not on the global RNG, which makes resuming exact.

    Evaluation (``shuffle=False``) gives rank r the indices r, r+W, r+2W... with no padding, so
    that gathering the predictions of all ranks counts every test image exactly once.
    """
    if shuffle:
        return DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed)
    return _StridedSampler(len(dataset), env.rank, env.world_size)  # type: ignore[arg-type]


class _StridedSampler(Sampler[int]):
    """Indices rank, rank + world, ... (no padding, no shuffle)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):  # noqa: ANN204
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:  # same interface as DistributedSampler
        pass


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks (in place, returned); identity in a single process."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order; ``[obj]`` in a single process."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
