"""The configuration of a training run and its check: :class:`TrainConfig`, :func:`check_train_config`.

Every argument is checked here before any work starts (the resume checkpoint is loaded too,
so that a wrong file fails at once); the CLI's ``memprof train`` builds a :class:`TrainConfig`
and :func:`memprof.train.loop.train` calls :func:`check_train_config` first.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from ..validation import (
    TRAIN_CHECKED,
    UsageError,
    check_amp_device,
    check_choice,
    check_output_dir,
    check_train_settings,
)
from .checkpoint import load_checkpoint
from .data import check_dataset
from .distributed import DistEnv, detect_dist_env

__all__ = ["DEVICES", "AmpMode", "TrainConfig", "check_train_config"]


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
            this many epochs (0: none, the deck's recipe and that of reports/training.md).
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
        allow_config_change: resume even when a setting that shapes the run (:data:`RUN_SHAPING`)
            differs from the checkpoint's, with a warning; refused otherwise.
        out_dir: where the log, checkpoints and report go.
        limit_batches: stop each epoch's training and evaluation after N batches (quick runs).
        num_workers: DataLoader worker processes.
        seed: seeds the initialisation, the shuffling and the augmentation.
        progress: show tqdm bars and a line per epoch (main rank only).
        num_classes: classifier outputs.
        model_options: keyword options of the registered model's builder (``{"depth": 2}`` for
            ``vit``; ``memprof train --model-option``); ``reversible`` is the field above.
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
    allow_config_change: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)


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
            learning rate, lr step; momentum outside [0, 1); negative weight decay or warm-up
            epochs; unknown model, device or amp mode; CUDA asked for without a GPU; fp16 on the
            CPU; a global batch not divisible by the number of ranks; an unknown dataset, missing
            CIFAR-10 data with download off, digits without scikit-learn; a resume file that is
            missing, not a checkpoint, or from a different model.
    """
    env = env or detect_dist_env()
    c = TrainConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig)})
    c.model_options = dict(c.model_options or {})
    if not custom_model:
        check_choice("model", c.model, _known_models())
    # the numbers and words, without torch: memprof train runs the same check before importing it
    for name, value in check_train_settings({k: getattr(c, k) for k in TRAIN_CHECKED}).items():
        setattr(c, name, value)
    if c.model_options:
        if custom_model:
            raise UsageError("model options are for a registered model; a model passed in is built already")
        from ..models.registry import check_model_options

        check_model_options(c.model, c.model_options)
    if c.device == "auto":
        c.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif c.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but no CUDA device is available; allowed here: cpu, auto")
    check_amp_device(c.amp, c.device)  # auto, now resolved
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
    if ckpt is not None:
        _check_resume_config(c, ckpt)
    if env.is_main:  # last: it creates the directory, which a refused run must not leave behind
        check_output_dir(out)  # before any work: a run must not train an epoch and then fail to write
    return c, ckpt


#: Settings that shape a run: resuming with another value is no exact continuation.
RUN_SHAPING = ("batch_size", "lr", "momentum", "weight_decay", "lr_step", "warmup_epochs", "gamma", "dataset", "amp",
               "reversible", "seed", "synthetic", "synthetic_size", "limit_batches", "num_classes", "model_options")


def _check_resume_config(c: TrainConfig, ckpt: dict[str, Any]) -> None:
    """Refuse (or, with ``allow_config_change``, loudly allow) a resume whose settings differ."""
    saved = {"model_options": {}, **(ckpt.get("config") or {})}  # written before options existed: none
    changed = [f"{k.replace('_', ' ')} {saved[k]!r} -> {getattr(c, k)!r}" for k in RUN_SHAPING
               if k in saved and saved[k] != getattr(c, k)]
    if not changed:
        return
    if not c.allow_config_change:
        raise UsageError(f"resume file {c.resume} was written with other settings ({'; '.join(changed)}): an exact "
                         "resume needs the same ones; pass them again, or --allow-config-change to continue anyway")
    import warnings

    warnings.warn(f"resuming {c.resume} with changed settings ({'; '.join(changed)}): the run is no exact "
                  "continuation of the interrupted one", stacklevel=3)
