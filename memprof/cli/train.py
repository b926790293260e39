"""`memprof train`: train and evaluate on CIFAR-10 or digits with the deck's recipe (single process or torchrun)."""

from __future__ import annotations

import argparse
import shlex
import sys


#: one line for ``memprof --help`` (read without building this verb's parser)
HELP = ("train/evaluate a model on CIFAR-10 (or scikit-learn's digits) with the deck's recipe (works under torchrun)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..models import list_models
    from ..train.config import DEVICES, AmpMode, TrainConfig
    from ..train.data import DATASETS

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help=HELP,
        description=(
            "Train MODEL on CIFAR-10 (or, with --dataset digits, scikit-learn's handwritten digits) with "
            "SGD + momentum and a step learning-rate schedule (the deck: "
            "lr 0.1 divided by 10 every 50 epochs, 300 epochs), logging every epoch to "
            "OUT/train_log.csv and writing the deck's per-class precision/recall/F1 table and a "
            "confusion matrix to OUT/report/. Under `torchrun --nproc_per_node N -m memprof train` "
            "it runs DistributedDataParallel (gloo on the CPU, NCCL on CUDA)."
        ),
    )
    p.add_argument("--model", default=d.model, choices=list_models(), help=f"model to train (default: {d.model})")
    p.add_argument("--model-option", dest="model_options", action="append", default=[], metavar="KEY=N",
                   help="an integer option of the model's builder, e.g. depth=6 for vit and revvit (repeatable; "
                   "default: the registered size)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"total epochs (default: {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"global batch size, split over the torchrun processes (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"initial SGD learning rate (default: {d.lr})")
    p.add_argument("--momentum", type=float, default=d.momentum, help=f"SGD momentum (default: {d.momentum})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"L2 weight decay; the deck gives none, 5e-4 is usual on CIFAR (default: {d.weight_decay})")
    p.add_argument("--lr-step", type=int, default=d.lr_step,
                   help=f"epochs between learning-rate decays (default: {d.lr_step})")
    p.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs,
                   help=f"raise the learning rate linearly over the first N epochs (default: {d.warmup_epochs}, none)")
    p.add_argument("--gamma", type=float, default=d.gamma, help=f"learning-rate decay factor (default: {d.gamma})")
    p.add_argument("--dataset", default=d.dataset, choices=DATASETS,
                   help="cifar10, or digits: scikit-learn's 8x8 handwritten digits upsampled to 32x32, "
                   f"offline, needs pip install scikit-learn (default: {d.dataset})")
    p.add_argument("--data", default=d.data_dir,
                   help=f"CIFAR-10 root, holding cifar-10-batches-py/ (default: {d.data_dir})")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=d.download,
                   help="download CIFAR-10 when absent (default: on; needs internet)")
    p.add_argument("--synthetic", action="store_true",
                   help="train on torchvision FakeData (random images and labels) instead of CIFAR-10 (default: off)")
    p.add_argument("--synthetic-size", type=int, default=d.synthetic_size,
                   help=f"training images of the synthetic set; test set: a quarter (default: {d.synthetic_size})")
    p.add_argument("--device", default=d.device, choices=DEVICES,
                   help=f"auto: CUDA when available (default: {d.device})")
    p.add_argument("--amp", default=d.amp, choices=[m.value for m in AmpMode],
                   help=f"mixed precision: bf16 (CPU/CUDA) or fp16 (CUDA, gradient scaler) (default: {d.amp})")
    p.add_argument("--reversible", action=argparse.BooleanOptionalAction, default=d.reversible,
                   help="rebuild activations in backward; --no-reversible trains the plain-autograd twin (default: on)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help=f"save a checkpoint every N epochs, 0: only at the end (default: {d.checkpoint_every})")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a checkpoint written by memprof train (default: start afresh)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although a setting that shapes the run (batch size, learning rate, schedule, "
                   "seed, data, amp...) differs from the checkpoint's; the run is then no exact continuation "
                   "(default: off, such a resume is refused)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory for the log, checkpoints and report (default: runs/MODEL)")
    p.add_argument("--limit-batches", type=int, default=None, metavar="N",
                   help="train and evaluate only N batches per epoch, for quick runs (default: all)")
    p.add_argument("--num-workers", type=int, default=d.num_workers,
                   help=f"DataLoader worker processes (default: {d.num_workers})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars or per-epoch lines (default: shown)")
    p.set_defaults(func=run)


def _model_options(pairs: list[str]) -> dict[str, int]:
    """``["depth=6", "width=96"]`` -> ``{"depth": 6, "width": 96}``; a malformed pair is a UsageError."""
    from ..validation import UsageError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value.lstrip("-").isdigit():
            raise UsageError(f"--model-option {pair!r} is not KEY=INTEGER (e.g. depth=6)")
        options[key] = int(value)
    return options


def run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, train

    config = TrainConfig(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, lr_step=args.lr_step,
        warmup_epochs=args.warmup_epochs, gamma=args.gamma,
        dataset=args.dataset, data_dir=args.data, download=args.download, synthetic=args.synthetic,
        synthetic_size=args.synthetic_size, device=args.device, amp=args.amp, reversible=args.reversible,
        checkpoint_every=args.checkpoint_every, resume=args.resume,
        out_dir=args.out or f"runs/{args.model}", limit_batches=args.limit_batches,
        num_workers=args.num_workers, seed=args.seed, progress=args.progress,
        allow_config_change=args.allow_config_change, model_options=_model_options(args.model_options),
    )
    command = "memprof " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    result = train(config, command=command)
    from ..train.distributed import detect_dist_env

    if not detect_dist_env().is_main:
        return 0
    print(result.report.to_text(), end="")
    last = result.history[-1] if result.history else None
    if last is not None:
        print(f"\nlast epoch {last.epoch}: test accuracy {last.test_acc:.4f}, train loss {last.loss:.4f}")
    if result.log_path is not None:
        print(f"log: {result.log_path}")
    else:
        print("no training log written: the checkpoint had no epoch left to train (raise --epochs to continue)")
    for path in result.checkpoints[-1:]:
        print(f"checkpoint: {path}")
    for path in result.report_paths:
        print(f"report: {path}")
    return 0
