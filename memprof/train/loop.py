"""The training loop with the deck's recipe, single process or DistributedDataParallel.

:func:`train` runs the whole job: the configuration check (:mod:`memprof.train.config`),
data, model, SGD with momentum and a step learning-rate schedule, optional mixed precision,
a per-epoch CSV log, checkpoints with exact resume (:mod:`memprof.train.checkpoint`), and at
the end the deck's per-class table and a confusion-matrix plot. The loop is cut into setup
(:func:`_setup`), one epoch of training (:func:`_train_epoch`), evaluation
(:func:`_evaluate_epoch`, with :mod:`memprof.train.evaluation`) and the final report.
"""

from __future__ import annotations

import csv
import io
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import is_out_of_memory, out_of_memory
from ..reports.files import atomic_write_text, provenance
from ..units import format_bytes
from ..validation import UsageError
from .checkpoint import CHECKPOINT_FORMAT, capture_rng, restore_rng, save_checkpoint
from .config import AmpMode, TrainConfig, check_train_config
from .data import load_datasets
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
from .evaluation import broadcast_buffers, evaluate
from .measurements import (
    autocast_context,
    measure_reconstruction_error,
    read_peak_memory,
    reset_peak_memory,
)
from .metrics import ClassificationReport, build_classification_report

__all__ = ["EpochRecord", "TrainResult", "train"]


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
        log_path: the per-epoch CSV (None when a resumed run had no epoch left and none existed).
        checkpoints: checkpoint files written by this call (rank 0 only).
        report_paths: report files written (rank 0 only).
    """

    history: list[EpochRecord]
    report: ClassificationReport
    model: nn.Module
    out_dir: Path
    log_path: Path | None
    checkpoints: list[Path]
    report_paths: list[Path]


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

    return get_model(c.model, num_classes=c.num_classes, reversible=c.reversible, **c.model_options)


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


@dataclass
class _Run:
    """Everything one training job holds between its phases (built by :func:`_setup`)."""

    c: TrainConfig
    env: DistEnv
    device: torch.device
    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    train_loader: DataLoader
    test_loader: DataLoader
    train_sampler: Any
    n_train: int
    classes: list[str]
    synthetic: bool
    start_epoch: int
    log: Callable[[str], None]
    show: bool


def _resume(c: TrainConfig, env: DistEnv, ckpt: dict[str, Any], model: nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> int:
    """Load a checkpoint's states (and this rank's RNG state); returns the epochs already done."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UsageError(f"resume file {c.resume} does not fit model {c.model!r}: {str(exc).splitlines()[0]}") from None
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    restore_rng(rng[env.rank] if len(rng) == env.world_size else rng[0])
    return int(ckpt["epoch"])


def _setup(c: TrainConfig, ckpt: dict[str, Any] | None, env: DistEnv, device: torch.device,
           model: nn.Module | None, log: Callable[[str], None] | None) -> _Run:
    """Data (rank 0 first, so that a download happens once), model, optimizer, schedule, loaders."""
    from tqdm.auto import tqdm

    show = c.progress and env.is_main
    if not env.is_main:
        barrier()
    data = load_datasets(c.data_dir, dataset=c.dataset, synthetic=c.synthetic, download=c.download,
                         synthetic_size=c.synthetic_size)
    if env.is_main:
        barrier()
    torch.manual_seed(c.seed)
    model = (model if model is not None else _build_model(c)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=c.lr_step, gamma=c.gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=c.amp == AmpMode.FP16.value)
    start_epoch = _resume(c, env, ckpt, model, optimizer, scheduler, scaler) if ckpt is not None else 0
    if ckpt is None:
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
    return _Run(
        c, env, device, model, ddp_model, optimizer, scheduler, scaler, train_loader, test_loader, train_sampler,
        len(train_loader) if c.limit_batches is None else min(len(train_loader), c.limit_batches),
        list(data.classes), data.synthetic, start_epoch,
        log if log is not None else (tqdm.write if show else (lambda s: None)), show,
    )


@dataclass
class _EpochStats:
    """One epoch's training figures on this rank, before they are gathered."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: torch.Tensor
    step_time: float = 0.0
    steps: int = 0
    last_x: torch.Tensor | None = None


def _train_epoch(run: _Run, epoch: int, criterion: nn.Module) -> _EpochStats:
    """One epoch of training steps (the learning rate is stepped by the caller)."""
    from tqdm.auto import tqdm

    c, device, optimizer, scaler = run.c, run.device, run.optimizer, run.scaler
    zero = (lambda dtype: torch.zeros((), dtype=dtype, device=device))
    st = _EpochStats(zero(torch.float64), zero(torch.int64), zero(torch.int64))
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(total=run.n_train, desc=f"epoch {epoch + 1}/{c.epochs}", disable=not run.show,
               leave=False, file=sys.stderr, dynamic_ncols=True)
    try:
        for i, (xb, yb) in enumerate(run.train_loader):
            if c.limit_batches is not None and i >= c.limit_batches:
                break
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if epoch < c.warmup_epochs:  # linear warm-up of the step schedule's learning rate
                frac = (epoch * run.n_train + i + 1) / (c.warmup_epochs * run.n_train)
                for group in optimizer.param_groups:
                    group["lr"] = c.lr * c.gamma ** (epoch // c.lr_step) * frac
            t0 = time.perf_counter()
            with autocast_context(c.amp, device):
                out = run.ddp_model(xb)
                loss = criterion(out.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            st.step_time += time.perf_counter() - t0
            st.steps += 1
            st.loss_sum += loss.detach().double() * yb.numel()
            st.correct += (out.detach().argmax(dim=1) == yb).sum()
            st.seen += yb.numel()
            st.last_x = xb
            bar.update(1)
            if run.show and (i % 10 == 0 or i == run.n_train - 1):
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:.4g}")
    finally:
        bar.close()
    return st


def _evaluate_all(run: _Run) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Every rank's predictions on the test set, gathered: (targets, predictions, mean loss)."""
    broadcast_buffers(run.model)
    targets, preds, loss_sum = evaluate(run.model, run.test_loader, run.device, run.c.amp, run.c.limit_batches)
    gathered = all_gather_objects((targets, preds, loss_sum))
    targets = torch.cat([g[0] for g in gathered])
    preds = torch.cat([g[1] for g in gathered])
    return targets, preds, sum(g[2] for g in gathered) / max(1, targets.numel())


def _evaluate_epoch(run: _Run, epoch: int, lr: float, st: _EpochStats, epoch_time: float
                    ) -> tuple[EpochRecord, tuple[torch.Tensor, torch.Tensor]]:
    """After an epoch: reconstruction error, test accuracy, and every rank's figures gathered."""
    recon = measure_reconstruction_error(run.model, st.last_x, run.c.amp) if st.last_x is not None else None
    recon = max((r for r in all_gather_objects(recon) if r is not None), key=lambda r: r.rel, default=None)
    targets, preds, test_loss = _evaluate_all(run)
    totals = all_reduce_sum(torch.stack([st.loss_sum, st.correct.double(), st.seen.double()]))
    peaks = all_gather_objects(read_peak_memory(run.device))
    step_times = all_gather_objects(st.step_time / max(1, st.steps))
    record = EpochRecord(
        epoch=epoch + 1,
        loss=float(totals[0] / totals[2].clamp(min=1)),
        train_acc=float(totals[1] / totals[2].clamp(min=1)),
        test_loss=float(test_loss),
        test_acc=float((targets == preds).double().mean()) if targets.numel() else 0.0,
        lr=float(lr),
        step_time_s=max(step_times),
        epoch_time_s=epoch_time,
        steps=st.steps,
        recon_rel_err=None if recon is None else recon.rel,
        recon_max_abs_err=None if recon is None else recon.max_abs,
        peak_mem_source=peaks[0][1],
        peak_mem_bytes=[p[0] for p in peaks],
    )
    return record, (targets, preds)


def _train(
    c: TrainConfig,
    ckpt: dict[str, Any] | None,
    env: DistEnv,
    device: torch.device,
    model: nn.Module | None,
    command: str | None,
    log: Callable[[str], None] | None,
) -> TrainResult:
    """Setup, the epochs (train, then evaluate), checkpoints, and the final report."""
    run = _setup(c, ckpt, env, device, model, log)
    main = env.is_main
    out_dir = Path(c.out_dir)
    log_path = out_dir / "train_log.csv"
    history: list[EpochRecord] = []
    checkpoints: list[Path] = []
    rows = _read_log(log_path, run.start_epoch) if (main and ckpt is not None) else []
    criterion = nn.CrossEntropyLoss()
    last_eval: tuple[torch.Tensor, torch.Tensor] | None = None
    if main and run.start_epoch >= c.epochs:
        run.log(f"checkpoint {c.resume} has {run.start_epoch} epochs already (--epochs {c.epochs}): evaluating only")
    try:
        last_eval = _run_epochs(run, c, env, device, out_dir, log_path, rows, history, checkpoints, criterion)
        if last_eval is None:  # nothing left to train: evaluate the resumed model
            targets, preds, _ = _evaluate_all(run)
            last_eval = (targets, preds)
    except (RuntimeError, MemoryError) as exc:  # NOTE [ Out of memory is a result ] (memprof.errors)
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(exc, c.batch_size, device) from None
    report, report_paths = _final_report(run, last_eval, command)
    barrier()
    written_log = log_path if log_path.is_file() else None  # a resumed run with no epoch left writes none
    return TrainResult(history, report, run.model, out_dir, written_log, checkpoints, report_paths)


def _run_epochs(run: _Run, c: TrainConfig, env: DistEnv, device: torch.device, out_dir: Path, log_path: Path,
                rows: list[dict[str, Any]], history: list[EpochRecord], checkpoints: list[Path],
                criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Train and evaluate the epochs left; returns the last evaluation (None when none was left)."""
    main = env.is_main
    last_eval: tuple[torch.Tensor, torch.Tensor] | None = None
    for epoch in range(run.start_epoch, c.epochs):
        run.train_sampler.set_epoch(epoch)
        run.ddp_model.train()
        reset_peak_memory(device)
        lr = run.optimizer.param_groups[0]["lr"]
        t_epoch = time.perf_counter()
        stats = _train_epoch(run, epoch, criterion)
        run.scheduler.step()
        record, last_eval = _evaluate_epoch(run, epoch, lr, stats, time.perf_counter() - t_epoch)
        history.append(record)
        if main:
            rows.append(record.to_row())
            _write_log(log_path, rows)
            run.log(_describe_epoch(record, c.epochs))
        done = epoch + 1
        if (c.checkpoint_every and done % c.checkpoint_every == 0) or done == c.epochs:
            path = _checkpoint(out_dir, done, c, run.model, run.optimizer, run.scheduler, run.scaler, env)
            if path is not None:
                checkpoints.append(path)
    return last_eval


def _final_report(run: _Run, last_eval: tuple[torch.Tensor, torch.Tensor], command: str | None
                  ) -> tuple[ClassificationReport, list[Path]]:
    """The deck's per-class table of the last evaluation; rank 0 writes it under OUT/report."""
    c = run.c
    names = run.classes[: c.num_classes] if len(run.classes) >= c.num_classes else c.num_classes
    report = build_classification_report(last_eval[0], last_eval[1], names)
    if not run.env.is_main:
        return report, []
    header = provenance(command or f"memprof.train.train(model={c.model!r})")
    note = " (synthetic data: FakeData, random labels; the accuracy means nothing)" if run.synthetic else ""
    header += f"\nModel {c.model}, dataset {c.dataset}, {len(last_eval[0])} test images{note}."
    return report, report.write(Path(c.out_dir) / "report", header=header)


def _checkpoint(out: Path, done: int, c: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, scaler: Any, env: DistEnv) -> Path | None:
    """Save after ``done`` epochs (rank 0 writes; every rank contributes its RNG state)."""
    rng = all_gather_objects(capture_rng())
    if not env.is_main:
        return None
    config = {k: v for k, v in asdict(c).items() if isinstance(v, (int, float, str, bool, dict)) or v is None}
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
    return save_checkpoint(out / "checkpoints" / f"epoch{done:04d}.pt", payload)


def _describe_epoch(r: EpochRecord, epochs: int) -> str:
    peaks = " ".join(f"r{i}={format_bytes(b)}" for i, b in enumerate(r.peak_mem_bytes))
    recon = "" if r.recon_rel_err is None else f"  recon {r.recon_rel_err:.2e}"
    return (
        f"epoch {r.epoch}/{epochs}  loss {r.loss:.4f}  train acc {r.train_acc:.2%}  "
        f"test acc {r.test_acc:.2%}  lr {r.lr:.4g}  step {r.step_time_s * 1000:.1f} ms{recon}  "
        f"peak {r.peak_mem_source} {peaks}"
    )
