"""Training and evaluation with the deck's recipe: config -> data -> loop -> metrics, single process or DDP.

``train(TrainConfig(...))`` runs a whole job (``memprof train`` on the command line):
:mod:`~memprof.train.config` checks the configuration, :mod:`~memprof.train.checkpoint` saves
and loads checkpoints with every rank's RNG state, :mod:`~memprof.train.loop` runs setup, epochs
and evaluation; ``evaluate`` and ``measure_reconstruction_error`` work on any model; the per-class
table of the deck is :class:`ClassificationReport`.
"""

from __future__ import annotations

from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from .config import AmpMode, TrainConfig, check_train_config
from .data import DataBundle, build_transforms, check_data_dir, load_datasets
from .distributed import DistEnv, detect_dist_env
from .evaluation import evaluate
from .loop import EpochRecord, TrainResult, train
from .measurements import (
    ReconstructionError,
    autocast_context,
    measure_reconstruction_error,
    read_peak_memory,
    reset_peak_memory,
)
from .metrics import (
    CIFAR10_CLASSES,
    ClassificationReport,
    build_classification_report,
    compute_confusion_matrix,
)

__all__ = [
    "AmpMode",
    "CHECKPOINT_FORMAT",
    "CIFAR10_CLASSES",
    "ClassificationReport",
    "DataBundle",
    "DistEnv",
    "EpochRecord",
    "ReconstructionError",
    "TrainConfig",
    "TrainResult",
    "autocast_context",
    "build_classification_report",
    "build_transforms",
    "check_data_dir",
    "check_train_config",
    "compute_confusion_matrix",
    "detect_dist_env",
    "evaluate",
    "load_checkpoint",
    "load_datasets",
    "measure_reconstruction_error",
    "read_peak_memory",
    "reset_peak_memory",
    "train",
]
