"""Training and evaluation with the deck's recipe, single process or DistributedDataParallel.

One call, :func:`train`, runs the whole job: argument checks (all of them, before any work),
data, model, SGD with momentum and a step learning-rate schedule, optional mixed precision,
per-epoch CSV log, checkpoints, exact resume, and at the end the deck's per-class table and a
confusion-matrix plot. :func:`evaluate` and :func:`measure_reconstruction_error` are usable on
their own.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import UsageError, check_choice, check_positive_int
from ..reporting import atomic_write_bytes, atomic_write_text, provenance
from ..units import format_bytes
from .data import check_dataset, load_datasets
from .distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    build_sampler,
    detect_dist_env,
    init_distributed,
    shutdown_distributed,
    unwrap_model,
    wrap_model,
)
from .metrics import ClassificationReport, build_classification_report

__all__ = [
    "AmpMode",
    "CHECKPOINT_FORMAT",
    "EpochRecord",
    "ReconstructionError",
    "TrainConfig",
    "TrainResult",
    "autocast_context",
    "check_train_config",
    "evaluate",
    "load_checkpoint",
    "measure_reconstruction_error",
    "read_peak_memory",
    "reset_peak_memory",
    "train",
]

CHECKPOINT_FORMAT = "memprof-train-checkpoint/1"


class AmpMode(str, Enum):
    """Mixed precision: off (float32), bf16 (CPU and CUDA autocast), fp16 (CUDA, with a GradScaler)."""

    OFF = "off"
    BF16 = "bf16"
    FP16 = "fp16"


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Everything :func:`train` needs. Defaults are the deck's recipe (Rev-VGG, CIFAR-10).

    Attributes:
        model: a name from ``memprof.models.list_models()``.
        epochs: total epochs (a resumed run continues up to this number).
        batch_size: the global batch; under DDP each of W ranks gets ``batch_size / W``.
        lr: initial learning rate of SGD.
        momentum: SGD momentum.
        weight_decay: L2 penalty (the deck gives none; 5e-4 is the usual CIFAR choice).
        lr_step: epochs between learning-rate decays (StepLR).
        warmup_epochs: raise the learning rate linearly, step by step, from lr/steps to lr over
            this many epochs (0: none, the deck's recipe); see NOTE [ Why VGG-19 starts slowly ].
        gamma: the decay factor.
        dataset: ``cifar10`` or ``digits`` (scikit-learn's, offline; see ``memprof.train.data``).
        data_dir: CIFAR-10 root (``cifar-10-batches-py/`` inside).
        download: let torchvision download CIFAR-10 when absent.
        synthetic: train on torchvision's FakeData instead (offline; accuracy is meaningless).
        synthetic_size: training images of the synthetic set (test: a quarter, at least 10).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: ``off``, ``bf16`` or ``fp16`` (CUDA only, with a gradient scaler).
        reversible: run the model's reversible sequences reversibly (False: plain autograd).
        checkpoint_every: save every N epochs (0: only at the end); the last epoch always saves.
        resume: a checkpoint written by this function to continue from.
        out_dir: where the log, checkpoints and report go.
        limit_batches: stop each epoch's training and evaluation after N batches (quick runs).
        num_workers: DataLoader worker processes.
        seed: seeds the initialisation, the shuffling and the augmentation.
        progress: show tqdm bars and a line per epoch (main rank only).
        num_classes: classifier outputs.
    """

    model: str = "revvgg"
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 50
    warmup_epochs: int = 0
    gamma: float = 0.1
    dataset: str = "cifar10"
    data_dir: str = "./data"
    download: bool = True
    synthetic: bool = False
    synthetic_size: int = 512
    device: str = "auto"
    amp: str = "off"
    reversible: bool = True
    checkpoint_every: int = 0
    resume: str | None = None
    out_dir: str = "runs/train"
    limit_batches: int | None = None
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    num_classes: int = 10


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


@dataclass
class EpochRecord:
    """One row of the per-epoch log.

    Attributes:
        epoch: 1-based epoch number.
        loss: mean training loss over the epoch's samples (all ranks).
        train_acc: training accuracy over the epoch (augmented images, model in training mode).
        test_loss: mean test loss; test_acc: test accuracy (every test image counted once).
        lr: the learning rate used during the epoch.
        step_time_s: mean seconds per optimizer step (forward, backward, optimizer; data
            loading excluded; CUDA synchronised), the slowest rank's.
        epoch_time_s: wall time of the training part of the epoch (rank 0).
        steps: optimizer steps taken.
        recon_rel_err / recon_max_abs_err: the worst ReversibleSequence input reconstruction
            error on the epoch's last batch, under the run's autocast mode (None without
            reversible sequences); see NOTE [ Measuring the reconstruction error ].
        peak_mem_source: what the peaks measure (NOTE [ Peak memory per rank ]).
        peak_mem_bytes: each rank's peak, in bytes, in rank order.
    """

    epoch: int
    loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    lr: float
    step_time_s: float
    epoch_time_s: float
    steps: int
    recon_rel_err: float | None
    recon_max_abs_err: float | None
    peak_mem_source: str
    peak_mem_bytes: list[int] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k != "peak_mem_bytes"}
        for r, b in enumerate(self.peak_mem_bytes):
            row[f"peak_mem_rank{r}_bytes"] = b
        return {k: ("" if v is None else v) for k, v in row.items()}


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        history: the epochs run by this call (a resumed run lists only the new ones).
        report: the final evaluation's per-class table (None on ranks other than 0 is never
            the case: every rank receives the gathered predictions).
        model: the trained model (unwrapped from DDP).
        out_dir: the output directory.
        log_path: the per-epoch CSV.
        checkpoints: checkpoint files written by this call (rank 0 only).
        report_paths: report files written (rank 0 only).
    """

    history: list[EpochRecord]
    report: ClassificationReport
    model: nn.Module
    out_dir: Path
    log_path: Path
    checkpoints: list[Path]
    report_paths: list[Path]


# --------------------------------------------------------------------------- argument checks


def _check_float(name: str, value: Any, *, low: float, low_open: bool, high: float | None = None,
                 high_open: bool = True, allowed: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number ({allowed}), got {value!r}") from None
    bad = (
        not math.isfinite(v)
        or (v <= low if low_open else v < low)
        or (high is not None and (v >= high if high_open else v > high))
    )
    if bad:
        raise UsageError(f"{name} must be {allowed}, got {value!r}")
    return v


def _known_models() -> list[str]:
    from ..models import list_models

    return list_models()


def check_train_config(
    config: TrainConfig, env: DistEnv | None = None, custom_model: bool = False
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Check every argument before any work starts; load the resume checkpoint if any.

    Args:
        config: the requested configuration.
        env: the distributed environment (for the batch-size split); detected when None.
        custom_model: True when the caller passes its own model (the name is then a label).

    Returns:
        ``(config, checkpoint)``: the config with numbers normalised and the device resolved,
        and the loaded resume checkpoint (None without ``resume``).

    Raises:
        UsageError: naming the bad value and the allowed ones: non-positive epochs, batch size,
            learning rate, lr step; momentum outside [0, 1); negative weight decay; unknown
            model, device or amp mode; CUDA asked for without a GPU; fp16 on the CPU; a global
            batch not divisible by the number of ranks; missing data with download off; a
            resume file that is missing, not a checkpoint, or from a different model.
    """
    env = env or detect_dist_env()
    c = TrainConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig)})
    if not custom_model:
        check_choice("model", c.model, _known_models())
    c.epochs = check_positive_int("epochs", c.epochs)
    c.batch_size = check_positive_int("batch size", c.batch_size)
    c.lr = _check_float("learning rate", c.lr, low=0.0, low_open=True, allowed="a positive number")
    c.momentum = _check_float("momentum", c.momentum, low=0.0, low_open=False, high=1.0,
                              allowed="in [0, 1)")
    c.weight_decay = _check_float("weight decay", c.weight_decay, low=0.0, low_open=False,
                                  allowed="a number >= 0")
    c.lr_step = check_positive_int("lr step", c.lr_step)
    if isinstance(c.warmup_epochs, bool) or not isinstance(c.warmup_epochs, int) or c.warmup_epochs < 0:
        raise UsageError(f"warmup epochs must be an integer >= 0 (0: no warm-up), got {c.warmup_epochs!r}")
    c.gamma = _check_float("gamma", c.gamma, low=0.0, low_open=True, high=1.0, high_open=False,
                           allowed="in (0, 1]")
    if isinstance(c.checkpoint_every, bool) or not isinstance(c.checkpoint_every, int) or c.checkpoint_every < 0:
        raise UsageError(f"checkpoint every must be an integer >= 0 (0: only at the end), got {c.checkpoint_every!r}")
    if c.limit_batches is not None:
        c.limit_batches = check_positive_int("limit batches", c.limit_batches)
    if isinstance(c.num_workers, bool) or not isinstance(c.num_workers, int) or c.num_workers < 0:
        raise UsageError(f"num workers must be an integer >= 0, got {c.num_workers!r}")
    c.synthetic_size = check_positive_int("synthetic size", c.synthetic_size)
    c.num_classes = check_positive_int("num classes", c.num_classes)
    c.amp = AmpMode(check_choice("amp mode", str(getattr(c.amp, "value", c.amp)), [m.value for m in AmpMode])).value
    check_choice("device", c.device, DEVICES)
    if c.device == "auto":
        c.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif c.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but no CUDA device is available; allowed here: cpu, auto")
    if c.amp == AmpMode.FP16.value and c.device != "cuda":
        raise UsageError("amp mode 'fp16' needs CUDA (float16 training uses a CUDA gradient scaler); on the CPU use: off, bf16")
    if c.batch_size % env.world_size:
        raise UsageError(
            f"batch size {c.batch_size} (the global batch) is not divisible by the {env.world_size} "
            f"processes; use a multiple of {env.world_size}"
        )
    check_dataset(c.dataset, c.data_dir, c.download, c.synthetic)
    out = Path(c.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    ckpt = load_checkpoint(c.resume, c.model, c.num_classes) if c.resume is not None else None
    return c, ckpt


# --------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path, model: str | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`train` and check that it belongs to ``model``.

    Args:
        path: the checkpoint file.
        model: the model name it must have been written for (None: any).
        num_classes: the classifier width it must have (None: any).

    Returns:
        The checkpoint dictionary (loaded with ``weights_only=True``).

    Raises:
        UsageError: when the file is missing, unreadable, not a memprof training checkpoint, or
            written for a different model or number of classes.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"resume file {p} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise UsageError(f"resume file {p} is not a memprof training checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"resume file {p} is not a memprof training checkpoint (expected format {CHECKPOINT_FORMAT})")
    if model is not None and ckpt.get("model_name") != model:
        raise UsageError(
            f"resume file {p} was written for model {ckpt.get('model_name')!r}, not {model!r}; "
            f"pass --model {ckpt.get('model_name')} or another checkpoint"
        )
    if num_classes is not None and ckpt.get("num_classes") != num_classes:
        raise UsageError(f"resume file {p} has {ckpt.get('num_classes')} classes, not {num_classes}")
    return ckpt


def _capture_rng() -> dict[str, Any]:
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def _restore_rng(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- memory, precision


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


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: str | AmpMode = "off",
    limit_batches: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Predict every batch of ``loader`` in eval mode (this rank's share only).

    Args:
        model: the (unwrapped) model; its train/eval mode is restored afterwards.
        loader: the evaluation loader.
        device: where to compute.
        amp: autocast mode.
        limit_batches: stop after this many batches.

    Returns:
        ``(targets, predictions, loss_sum)`` with the labels on the CPU and the summed loss.
    """
    was_training = model.training
    model.eval()
    targets, preds = [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for i, (xb, yb) in enumerate(loader):
            if limit_batches is not None and i >= limit_batches:
                break
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with autocast_context(amp, device):
                out = model(xb)
            loss_sum += nn.functional.cross_entropy(out.float(), yb, reduction="sum").double()
            targets.append(yb.cpu())
            preds.append(out.argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    cat = (lambda ts: torch.cat(ts) if ts else torch.zeros(0, dtype=torch.long))
    return cat(targets), cat(preds), float(loss_sum)


def _broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluating.

    Under DDP each rank folds its own last batch into its running statistics after the buffers
    were broadcast at the start of that forward; evaluation and checkpoints use rank 0's.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in model.buffers():
            dist.broadcast(b, src=0)


# --------------------------------------------------------------------------- the log


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_log(path: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    """Rows of an existing log for epochs <= ``up_to_epoch`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("epoch", "").isdigit() and int(r["epoch"]) <= up_to_epoch]


# --------------------------------------------------------------------------- train


def _build_model(c: TrainConfig) -> nn.Module:
    from ..models import get_model

    return get_model(c.model, num_classes=c.num_classes, reversible=c.reversible)


def train(
    config: TrainConfig,
    model: nn.Module | None = None,
    *,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train and evaluate a model with SGD + StepLR, single process or under torchrun (DDP).

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is joined
    here (gloo on the CPU, NCCL on CUDA), each rank trains on its share of every global batch,
    and rank 0 writes the log, checkpoints and report.

    Args:
        config: the run's settings (checked in full before any work).
        model: train this model instead of ``memprof.models.get_model(config.model)``;
            ``config.model`` then only labels the checkpoints.
        command: the command line named in the report files' provenance.
        log: where the per-epoch summary lines go (default: tqdm.write to stderr when
            ``config.progress``; nothing otherwise).

    Returns:
        A :class:`TrainResult`.

    Raises:
        UsageError: for bad arguments (see :func:`check_train_config`) or absent data.
    """
    env = detect_dist_env()
    c, ckpt = check_train_config(config, env, custom_model=model is not None)
    from torch import distributed as dist

    joined = env.distributed and not dist.is_initialized()
    device = init_distributed(env, c.device)
    try:
        return _train(c, ckpt, env, device, model, command, log)
    finally:
        if joined:
            shutdown_distributed()


def _train(
    c: TrainConfig,
    ckpt: dict[str, Any] | None,
    env: DistEnv,
    device: torch.device,
    model: nn.Module | None,
    command: str | None,
    log: Callable[[str], None] | None,
) -> TrainResult:
    from tqdm.auto import tqdm

    main = env.is_main
    show = c.progress and main
    if log is None:
        log = tqdm.write if show else (lambda s: None)
    out_dir = Path(c.out_dir)
    log_path = out_dir / "train_log.csv"

    # Data: rank 0 first, so that a download happens once.
    if not main:
        barrier()
    data = load_datasets(c.data_dir, dataset=c.dataset, synthetic=c.synthetic, download=c.download, synthetic_size=c.synthetic_size)
    if main:
        barrier()

    torch.manual_seed(c.seed)
    if model is None:
        model = _build_model(c)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=c.lr_step, gamma=c.gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=c.amp == AmpMode.FP16.value)
    start_epoch = 0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UsageError(f"resume file {c.resume} does not fit model {c.model!r}: {str(exc).splitlines()[0]}") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        rng = ckpt["rng"]
        _restore_rng(rng[env.rank] if len(rng) == env.world_size else rng[0])
    else:
        # Each rank augments with its own stream (rank 0's equals the single-process one).
        torch.manual_seed(c.seed + env.rank)
        random.seed(c.seed + env.rank)
    ddp_model = wrap_model(model, env, device)

    per_rank = c.batch_size // env.world_size
    train_sampler = build_sampler(data.train, env, shuffle=True, seed=c.seed)
    test_sampler = build_sampler(data.test, env, shuffle=False, seed=c.seed)
    pin = device.type == "cuda"
    train_loader = DataLoader(data.train, batch_size=per_rank, sampler=train_sampler,
                              num_workers=c.num_workers, pin_memory=pin)
    test_loader = DataLoader(data.test, batch_size=per_rank, sampler=test_sampler,
                             num_workers=c.num_workers, pin_memory=pin)
    n_train = len(train_loader) if c.limit_batches is None else min(len(train_loader), c.limit_batches)

    history: list[EpochRecord] = []
    checkpoints: list[Path] = []
    rows = _read_log(log_path, start_epoch) if (main and ckpt is not None) else []
    criterion = nn.CrossEntropyLoss()
    last_eval: tuple[torch.Tensor, torch.Tensor] | None = None
    if main and start_epoch >= c.epochs:
        log(f"checkpoint {c.resume} has {start_epoch} epochs already (--epochs {c.epochs}): evaluating only")

    for epoch in range(start_epoch, c.epochs):
        train_sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        ddp_model.train()
        reset_peak_memory(device)
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = torch.zeros((), dtype=torch.int64, device=device)
        step_time = 0.0
        steps = 0
        last_x: torch.Tensor | None = None
        t_epoch = time.perf_counter()
        bar = tqdm(total=n_train, desc=f"epoch {epoch + 1}/{c.epochs}", disable=not show,
                   leave=False, file=sys.stderr, dynamic_ncols=True)
        try:
            for i, (xb, yb) in enumerate(train_loader):
                if c.limit_batches is not None and i >= c.limit_batches:
                    break
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                if epoch < c.warmup_epochs:  # linear warm-up of the step schedule's learning rate
                    frac = (epoch * n_train + i + 1) / (c.warmup_epochs * n_train)
                    for group in optimizer.param_groups:
                        group["lr"] = c.lr * c.gamma ** (epoch // c.lr_step) * frac
                t0 = time.perf_counter()
                with autocast_context(c.amp, device):
                    out = ddp_model(xb)
                    loss = criterion(out.float(), yb)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                step_time += time.perf_counter() - t0
                steps += 1
                loss_sum += loss.detach().double() * yb.numel()
                correct += (out.detach().argmax(dim=1) == yb).sum()
                seen += yb.numel()
                last_x = xb
                bar.update(1)
                if show and (i % 10 == 0 or i == n_train - 1):
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:.4g}")
        finally:
            bar.close()
        scheduler.step()
        epoch_time = time.perf_counter() - t_epoch

        recon = measure_reconstruction_error(model, last_x, c.amp) if last_x is not None else None
        recons = all_gather_objects(recon)
        recon = max((r for r in recons if r is not None), key=lambda r: r.rel, default=None)

        _broadcast_buffers(model)
        targets, preds, test_loss = evaluate(model, test_loader, device, c.amp, c.limit_batches)
        gathered = all_gather_objects((targets, preds, test_loss))
        targets = torch.cat([g[0] for g in gathered])
        preds = torch.cat([g[1] for g in gathered])
        test_loss = sum(g[2] for g in gathered) / max(1, targets.numel())
        last_eval = (targets, preds)

        totals = all_reduce_sum(torch.stack([loss_sum, correct.double(), seen.double()]))
        peaks = all_gather_objects(read_peak_memory(device))
        step_times = all_gather_objects(step_time / max(1, steps))
        record = EpochRecord(
            epoch=epoch + 1,
            loss=float(totals[0] / totals[2].clamp(min=1)),
            train_acc=float(totals[1] / totals[2].clamp(min=1)),
            test_loss=float(test_loss),
            test_acc=float((targets == preds).double().mean()) if targets.numel() else 0.0,
            lr=float(lr),
            step_time_s=max(step_times),
            epoch_time_s=epoch_time,
            steps=steps,
            recon_rel_err=None if recon is None else recon.rel,
            recon_max_abs_err=None if recon is None else recon.max_abs,
            peak_mem_source=peaks[0][1],
            peak_mem_bytes=[p[0] for p in peaks],
        )
        history.append(record)
        if main:
            rows.append(record.to_row())
            _write_log(log_path, rows)
            log(_describe_epoch(record, c.epochs))

        done = epoch + 1
        if (c.checkpoint_every and done % c.checkpoint_every == 0) or done == c.epochs:
            path = _checkpoint(out_dir, done, c, model, optimizer, scheduler, scaler, env)
            if path is not None:
                checkpoints.append(path)

    if last_eval is None:  # nothing left to train: evaluate the resumed model
        _broadcast_buffers(model)
        targets, preds, _ = evaluate(model, test_loader, device, c.amp, c.limit_batches)
        gathered = all_gather_objects((targets, preds, 0.0))
        last_eval = (torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered]))
    report = build_classification_report(last_eval[0], last_eval[1], data.classes[: c.num_classes]
                                         if len(data.classes) >= c.num_classes else c.num_classes)
    report_paths: list[Path] = []
    if main:
        header = provenance(command or f"memprof.train.train(model={c.model!r})")
        note = " (synthetic data: FakeData, random labels; the accuracy means nothing)" if data.synthetic else ""
        header += f"\nModel {c.model}, dataset {c.dataset}, {len(last_eval[0])} test images{note}."
        report_paths = report.write(out_dir / "report", header=header)
    barrier()
    return TrainResult(history, report, model, out_dir, log_path, checkpoints, report_paths)


def _checkpoint(out: Path, done: int, c: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, scaler: Any, env: DistEnv) -> Path | None:
    """Save after ``done`` epochs (rank 0 writes; every rank contributes its RNG state)."""
    rng = all_gather_objects(_capture_rng())
    if not env.is_main:
        return None
    config = {k: v for k, v in asdict(c).items() if isinstance(v, (int, float, str, bool)) or v is None}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": c.model,
        "num_classes": c.num_classes,
        "epoch": done,
        "world_size": env.world_size,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
        "config": config,
    }
    return _save_checkpoint(out / "checkpoints" / f"epoch{done:04d}.pt", payload)


def _describe_epoch(r: EpochRecord, epochs: int) -> str:
    peaks = " ".join(f"r{i}={format_bytes(b)}" for i, b in enumerate(r.peak_mem_bytes))
    recon = "" if r.recon_rel_err is None else f"  recon {r.recon_rel_err:.2e}"
    return (
        f"epoch {r.epoch}/{epochs}  loss {r.loss:.4f}  train acc {r.train_acc:.2%}  "
        f"test acc {r.test_acc:.2%}  lr {r.lr:.4g}  step {r.step_time_s * 1000:.1f} ms{recon}  "
        f"peak {r.peak_mem_source} {peaks}"
    )
