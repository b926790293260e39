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
