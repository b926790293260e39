"""Training checkpoints: saved atomically with every rank's RNG state, loaded with checks.

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the epoch, the
configuration and the RNG state of every rank (torch, CUDA, Python, NumPy), so that a resumed
run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import torch

from ..reports.files import atomic_write_bytes
from ..validation import UsageError

__all__ = ["CHECKPOINT_FORMAT", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]

CHECKPOINT_FORMAT = "memprof-train-checkpoint/1"


def load_checkpoint(path: str | Path, model: str | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`train` and check that it belongs to ``model``.

    Args:
        path: the checkpoint file.
        model: the model name it must have been written for (None: any).
        num_classes: the classifier width it must have (None: any).

    Returns:
        The checkpoint dictionary (loaded with ``weights_only=True``).

    Raises:
        UsageError: when the file is a directory, missing, unreadable, truncated or corrupted,
            not a memprof training checkpoint, or written for a different model or number of classes.
    """
    p = Path(path)
    ckpt = _read_checkpoint_file(p)
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


def _read_checkpoint_file(p: Path) -> Any:
    """``torch.load`` of a resume file, with what is wrong with it said plainly.

    ``torch.save`` writes a zip archive: a file that does not start like one was not written by
    it; one that starts like one but has no end (the zip directory comes last) was cut short.

    Raises:
        UsageError: for a directory, a missing file, a file torch.save did not write, or a
            truncated or corrupted one.
    """
    import zipfile

    if p.is_dir():
        found = sorted(p.glob("**/epoch*.pt"))
        hint = f"; the newest checkpoint in it is {found[-1]}" if found else ""
        raise UsageError(f"resume file {p} is a directory, not a checkpoint file{hint}")
    if not p.exists():
        raise UsageError(f"resume file {p} does not exist")
    try:
        with p.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise UsageError(f"resume file {p} cannot be read: {exc.strerror or exc}") from None
    if head[:2] != b"PK":
        raise UsageError(f"resume file {p} is not a memprof training checkpoint (not a file written by torch.save)")
    if not zipfile.is_zipfile(p):
        raise UsageError(f"resume file {p} is truncated or corrupted ({p.stat().st_size:,} bytes, the archive has "
                         "no end): the run that wrote it was cut short; use an earlier checkpoint")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged archive or foreign pickled objects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"resume file {p} is corrupted or holds objects a checkpoint does not: {first}") from None


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch, CUDA, Python, NumPy), as tensors and plain values."""
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the RNG states :func:`capture_rng` returned."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (never half-written)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())
