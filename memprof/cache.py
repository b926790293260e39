"""The result cache: rendered CLI results kept on disk, so that ``memprof table vgg19`` starts without torch.

See NOTE [ The result cache ] below. Nothing here imports torch or another memprof module but
:mod:`memprof.version`: the cache is read before the library is.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# NOTE [ The result cache ]
# ``import torch`` alone takes seconds, and ``memprof table`` on a registered model needs it to
# record a forward. That forward on the ``meta`` device is deterministic: the same arguments, the
# same memprof code and the same packages give the same bytes. So the rendered output is kept in
# an entry ``{"key": ..., "depends": ..., "output": ...}``:
#
# - ``key``: the verb and its resolved arguments (the registered model's name and options, batch
#   size, dtype, depth, input shape, device, format and the flags that change the rendering);
#   memprof's version; the versions of torch, NumPy, pandas and tabulate (read with
#   :mod:`importlib.metadata`, nothing imported) and Python's major.minor. The file is named by
#   the key's hash; an entry holding another key is a miss.
# - ``depends``: the SHA-256 of every memprof module the computing process had imported when the
#   output was rendered (path relative to the package -> hash; :func:`record_dependencies`). A
#   module that was not imported cannot have shaped the output, so this is exact and no wider:
#   editing the README, a benchmark or ``memprof/train/loop.py`` leaves ``memprof table``'s
#   entries valid, editing ``memprof/rendering/layer_table.py`` or ``memprof/cli/table.py``
#   misses. A read re-hashes those files; one changed or gone is a miss. memprof reads no data
#   files when it renders a table (``tests/test_startup.py`` holds the package to .py files).
#
# Two places hold entries, with the same layout (``<verb>/<name>.json``), read in this order:
#
# 1. the user's cache, written after every computed result: ``$MEMPROF_CACHE_DIR``, else
#    ``$XDG_CACHE_HOME/memprof``, else ``~/.cache/memprof``;
# 2. the entries shipped inside the package (``memprof/shipped_cache/``, package data), so that
#    the first ``memprof table vgg19`` after a clone or an install is fast too. They are what the
#    user's cache holds after ``memprof table MODEL --format F`` for every built-in model at its
#    default arguments in every format, computed by ``memprof report tables``
#    (:func:`memprof.reports.tables.write_shipped_cache`, which runs exactly that command line)
#    and held current by ``tests/test_table.py``. Another torch, Python or an edited dependency
#    misses them, and the table is computed, as without them.
#
# Only what cannot change between runs is cached: a registered built-in model on the ``meta``
# device. A ``package.module:factory`` (the user's code may change) and a real pass (``cpu`` or
# ``cuda``) always run. An entry is written through a temporary file and a rename; one that
# cannot be read, does not parse or holds another key is recomputed. A directory that cannot be
# read or written is skipped silently: the cache only ever saves time, it never fails a command.
# ``--no-cache`` or ``MEMPROF_NO_CACHE=1`` bypasses both places (neither read nor written).
# Nothing evicts entries; each is a few KiB, and deleting the user's directory is always safe.

__all__ = ["PACKAGE_DIR", "SHIPPED_DIR", "cache_dir", "cache_enabled", "cache_key", "entry_name",
           "read_cached", "read_entry", "record_dependencies", "write_cached"]

#: bump when the layout of an entry changes
_ENTRY_FORMAT = 2

#: the packages whose versions are part of every key (their code shapes the output)
_PACKAGES = ("torch", "numpy", "pandas", "tabulate")

#: the memprof package directory; ``depends`` paths are relative to it
PACKAGE_DIR = Path(__file__).resolve().parent

#: the entries shipped with the package (NOTE [ The result cache ])
SHIPPED_DIR = PACKAGE_DIR / "shipped_cache"


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


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cache_key(verb: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The key of a result: the verb, its resolved arguments and the versions the output depends on.

    Args:
        verb: the CLI verb (``"table"``).
        arguments: every argument that changes the output, resolved (JSON-serialisable).

    Returns:
        The key, a JSON-serialisable dict (memprof's own code is checked through the entry's
        ``depends``, NOTE [ The result cache ]).
    """
    from .version import __version__

    return json.loads(json.dumps({
        "entry_format": _ENTRY_FORMAT,
        "verb": verb,
        "arguments": dict(arguments),
        "memprof": __version__,
        "python": list(sys.version_info[:2]),
        "packages": {name: _version(name) for name in _PACKAGES},
    }))  # as it reads back: tuples become lists


def entry_name(key: Mapping[str, Any]) -> str:
    """``<verb>/<model>.<format>.<hash>.json``: the key's hash, after a readable prefix where the key has one."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    arguments = key.get("arguments") or {}
    prefix = "".join(f"{arguments[k]}." for k in ("model", "format") if isinstance(arguments.get(k), str))
    return f"{key['verb']}/{prefix}{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def _file_digest(relative: str, memo: dict[str, str | None]) -> str | None:
    if relative not in memo:
        try:
            memo[relative] = hashlib.sha256((PACKAGE_DIR / relative).read_bytes()).hexdigest()
        except OSError:
            memo[relative] = None
    return memo[relative]


def record_dependencies() -> dict[str, str] | None:
    """Path (relative to the package) -> SHA-256 of every memprof module imported in this process.

    Called after a result is rendered: these modules are all the memprof code that could have
    shaped it (NOTE [ The result cache ]).

    Returns:
        The dependencies, or None when a memprof module was loaded from outside this package
        directory or without a source file (then nothing is cached).
    """
    found: dict[str, str] = {}
    memo: dict[str, str | None] = {}
    for name, module in list(sys.modules.items()):
        if name == "__main__":  # ``python -m memprof``: memprof/__main__.py runs under this name
            name = getattr(getattr(module, "__spec__", None), "name", None) or name
        if module is None or (name != "memprof" and not name.startswith("memprof.")):
            continue
        file = getattr(module, "__file__", None)
        if file is None:
            return None
        try:
            relative = Path(file).resolve().relative_to(PACKAGE_DIR).as_posix()
        except ValueError:
            return None
        digest = _file_digest(relative, memo)
        if digest is None or not relative.endswith(".py"):
            return None
        found[relative] = digest
    return dict(sorted(found.items()))


def _valid(entry: Any, key: Mapping[str, Any], memo: dict[str, str | None]) -> str | None:
    """The entry's output if it holds ``key`` and every dependency still hashes the same."""
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    depends, output = entry.get("depends"), entry.get("output")
    if not isinstance(depends, dict) or not depends or not isinstance(output, str):
        return None
    for relative, digest in depends.items():
        if ".." in Path(relative).parts or _file_digest(relative, memo) != digest:
            return None
    return output


def read_entry(path: Path) -> Any:
    """The parsed entry at ``path``; None when absent, unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable, not JSON or not UTF-8 (UnicodeDecodeError)
        return None


def read_cached(key: Mapping[str, Any], *, shipped: bool = True) -> str | None:
    """The output stored under ``key``: the user's cache first, then (with ``shipped``) the package's.

    Returns:
        The output, or None when no entry holds ``key`` with unchanged dependencies (absent,
        unreadable, corrupt, another key's, or a dependency edited since).
    """
    key = json.loads(json.dumps(key))
    name = entry_name(key)
    memo: dict[str, str | None] = {}
    for root in (cache_dir(), SHIPPED_DIR) if shipped else (cache_dir(),):
        output = _valid(read_entry(root / name), key, memo)
        if output is not None:
            return output
    return None


def write_cached(key: Mapping[str, Any], output: str, depends: Mapping[str, str] | None = None,
                 root: Path | None = None) -> Path | None:
    """Store ``output`` under ``key`` atomically; a directory that cannot be written is skipped.

    Args:
        key: from :func:`cache_key`.
        output: the rendered result.
        depends: from :func:`record_dependencies` (default: recorded now).
        root: where (default: :func:`cache_dir`).

    Returns:
        The entry's path, or None when nothing was written (no dependencies, or an unusable directory).
    """
    depends = record_dependencies() if depends is None else depends
    if not depends:
        return None
    path = (cache_dir() if root is None else root) / entry_name(key)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"key": key, "depends": dict(depends), "output": output}, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
        tmp = None
        return path
    except OSError:  # NOTE [ The result cache ]: never an error
        return None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
