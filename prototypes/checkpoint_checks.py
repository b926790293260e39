"""Prototype: say what is wrong with a resume file, and which settings changed since it was written."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch


class UsageError(ValueError):
    pass


def read_checkpoint_file(path: str | Path) -> Any:
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("**/epoch*.pt"))
        hint = f"; the newest checkpoint inside is {found[-1]}" if found else ""
        raise UsageError(f"resume file {path} is a directory, not a checkpoint file{hint}")
    if not p.exists():
        raise UsageError(f"resume file {path} does not exist")
    with p.open("rb") as fh:
        head = fh.read(4)
    if head[:2] != b"PK":  # torch.save writes a zip archive
        raise UsageError(f"resume file {path} is not a checkpoint written by torch.save (not a zip archive)")
    if not zipfile.is_zipfile(p):
        raise UsageError(f"resume file {path} is truncated or corrupted: the archive has no end "
                         f"({p.stat().st_size} bytes); use an earlier checkpoint")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"resume file {path} is corrupted: {first}") from None


#: settings whose change makes a resumed run differ from the uninterrupted one
RUN_DEFINING = ("model", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "gamma", "amp",
                "reversible", "seed", "synthetic", "synthetic_size", "num_classes", "limit_batches")


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{k.replace('_', ' ')} {saved[k]!r} -> {now.get(k)!r}" for k in RUN_DEFINING
            if k in saved and saved[k] != now.get(k)]


if __name__ == "__main__":
    import sys
    for a in sys.argv[1:]:
        try:
            read_checkpoint_file(a)
            print(a, "ok")
        except UsageError as e:
            print(e)
