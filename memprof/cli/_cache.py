"""A cache of the CLI's rendered results, so that a repeated ``memprof table vgg19`` starts without torch.

See NOTE [ The result cache ] below.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

# NOTE [ The result cache ]
# ``import torch`` alone takes seconds, and ``memprof table`` on a registered model needs it to
# record a forward. That forward on the ``meta`` device is deterministic: the same arguments, the
# same memprof and the same torch give the same bytes. So the rendered output is kept under a key
# of everything it depends on:
#
# - the verb and its resolved arguments (the registered model's name and options, batch size,
#   dtype, depth, input shape, device, format and the flags that change the rendering);
# - memprof's version and a SHA-256 of every ``.py`` file of the package, so any change to the
#   code (an edited checkout included) misses;
# - the versions of torch, pandas and tabulate (read with :mod:`importlib.metadata`, nothing
#   imported) and of Python.
#
# Only what cannot change between runs is cached: a registered built-in model on the ``meta``
# device. A ``package.module:factory`` (the user's code may change) and a real pass (``cpu`` or
# ``cuda``) always run. An entry is a JSON file ``{"key": ..., "output": ...}`` named by the
# key's hash, written through a temporary file and a rename; one that cannot be read, does not
# parse or holds another key is recomputed. A directory that cannot be read or written is
# skipped silently: the cache only ever saves time, it never fails a command.
#
# Where: ``$MEMPROF_CACHE_DIR``, else ``$XDG_CACHE_HOME/memprof``, else ``~/.cache/memprof``.
# ``--no-cache`` or ``MEMPROF_NO_CACHE=1`` bypasses it (neither read nor written). Nothing
# evicts entries; each is a few KiB, and deleting the directory is always safe.

__all__ = ["cache_dir", "cache_enabled", "cache_key", "read_cached", "write_cached"]

#: bump when the layout of an entry changes
_ENTRY_FORMAT = 1

#: the packages whose versions are part of every key (their code shapes the output)
_PACKAGES = ("torch", "pandas", "tabulate")


def cache_dir() -> Path:
    """``$MEMPROF_CACHE_DIR``, else ``$XDG_CACHE_HOME/memprof``, else ``~/.cache/memprof``."""
    if os.environ.get("MEMPROF_CACHE_DIR"):
        return Path(os.environ["MEMPROF_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "memprof"
    return Path.home() / ".cache" / "memprof"


def cache_enabled(no_cache: bool = False) -> bool:
    """False with ``--no-cache`` or ``MEMPROF_NO_CACHE`` set to anything but empty or 0."""
    return not no_cache and os.environ.get("MEMPROF_NO_CACHE", "") in ("", "0")


@lru_cache(maxsize=1)
def _source_digest() -> str:
    """SHA-256 over the path and bytes of every ``.py`` file of the memprof package."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cache_key(verb: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The key of a result: the verb, its resolved arguments and everything the output depends on.

    Args:
        verb: the CLI verb (``"table"``).
        arguments: every argument that changes the output, resolved (JSON-serialisable).

    Returns:
        The key, a JSON-serialisable dict.
    """
    from ..version import __version__

    return {
        "entry_format": _ENTRY_FORMAT,
        "verb": verb,
        "arguments": dict(arguments),
        "memprof": __version__,
        "source_sha256": _source_digest(),
        "python": list(sys.version_info[:2]),
        "packages": {name: _version(name) for name in _PACKAGES},
    }


def _entry_path(key: Mapping[str, Any]) -> Path:
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return cache_dir() / str(key["verb"]) / f"{hashlib.sha256(text.encode()).hexdigest()[:40]}.json"


def read_cached(key: Mapping[str, Any]) -> str | None:
    """The output stored under ``key``; None when absent, unreadable, corrupt or another key's."""
    try:
        entry = json.loads(_entry_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable, not JSON or not UTF-8 (UnicodeDecodeError)
        return None
    if not isinstance(entry, dict) or entry.get("key") != json.loads(json.dumps(key)):
        return None
    output = entry.get("output")
    return output if isinstance(output, str) else None


def write_cached(key: Mapping[str, Any], output: str) -> None:
    """Store ``output`` under ``key`` atomically; a directory that cannot be written is skipped."""
    path = _entry_path(key)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"key": key, "output": output}, f)
        os.replace(tmp, path)
        tmp = None
    except OSError:  # NOTE [ The result cache ]: never an error
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
