"""``reports/<model>.md`` and ``.csv``: the per-layer tables of vgg19, revvgg, irevvgg, vit and revvit.

Also the result-cache entries shipped in the package (``memprof/shipped_cache/``, NOTE [ The
result cache ] in :mod:`memprof.cache`): :func:`write_tables` is ``memprof report tables``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..api.table import layer_table
from ..cache import PACKAGE_DIR, SHIPPED_DIR
from ..vocabulary import BUILTIN_MODELS, FORMATS
from .files import atomic_write_text, provenance

__all__ = ["REPORT_MODELS", "SHIPPED_COMMANDS", "write_shipped_cache", "write_table_reports", "write_tables"]

#: The reports written by :func:`write_table_reports` (one Markdown and one CSV per model).
REPORT_MODELS = ("vgg19", "revvgg", "irevvgg", "vit", "revvit")


def write_table_reports(out_dir: Path) -> list[Path]:
    """``reports/<model>.md`` and ``.csv`` for every model of :data:`REPORT_MODELS` (batch 128, float32).

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    written = []
    for name in REPORT_MODELS:
        table = layer_table(name)
        command = "memprof report tables"
        flag = " --seed-table" if table.seed is not None else ""
        same = f"`memprof table {name} --format markdown{flag}` prints the same tables."
        md = f"{provenance(command)}\n\n{same}\n\n" + table.to_markdown(include_seed_table=True)
        written.append(atomic_write_text(out_dir / f"{name}.md", md))
        csv = table.to_csv()  # plain CSV; its provenance is in the .md beside it
        written.append(atomic_write_text(out_dir / f"{name}.csv", csv))
    return written


#: The command lines whose results ship in the package: every built-in model at its default
#: arguments, in every format (the argv after ``memprof``).
SHIPPED_COMMANDS: tuple[tuple[str, ...], ...] = tuple(
    ("table", model, "--format", fmt) for model in BUILTIN_MODELS for fmt in FORMATS)

#: Runs ``memprof.cli.main`` on each argv (one per line of stdin, split at spaces) with the shipped entries hidden,
#: so that each result is computed and written to $MEMPROF_CACHE_DIR as a user's first run writes it.
_DRIVER = """
import sys
from pathlib import Path
import memprof.cache
memprof.cache.SHIPPED_DIR = Path(sys.argv[1])  # empty: compute every result
from memprof.cli import main
for line in sys.stdin.read().splitlines():
    if main(line.split(" ")) != 0:
        sys.exit(f"memprof {line!r} failed")
"""


def write_shipped_cache(shipped_dir: Path = SHIPPED_DIR) -> list[Path]:
    """The result-cache entries of :data:`SHIPPED_COMMANDS`, replacing those in ``shipped_dir``.

    Each command runs through the CLI in one fresh process with an empty cache directory, so an
    entry holds exactly what a user's first ``memprof table MODEL --format F`` caches: the
    output and the hashes of the memprof modules that computed it (NOTE [ The result cache ]).

    Returns:
        The entries written.

    Raises:
        RuntimeError: when a command fails (its stderr is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="memprof-shipped-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "MEMPROF_NO_CACHE"}
        env["MEMPROF_CACHE_DIR"] = str(Path(tmp) / "cache")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, "-c", _DRIVER, str(Path(tmp) / "none")], env=env, check=False,
                              input="\n".join(" ".join(argv) for argv in SHIPPED_COMMANDS),
                              cwd=PACKAGE_DIR.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"computing the shipped tables failed:\n{proc.stderr}")
        made = sorted((Path(tmp) / "cache").rglob("*.json"))
        if len(made) != len(SHIPPED_COMMANDS):
            raise RuntimeError(f"{len(SHIPPED_COMMANDS)} commands cached {len(made)} entries:\n{proc.stderr}")
        shipped_dir = Path(shipped_dir)
        for old in shipped_dir.rglob("*.json"):
            old.unlink()
        written = []
        for entry in made:
            target = shipped_dir / entry.relative_to(Path(tmp) / "cache")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry, target)
            written.append(target)
    return written


def write_tables(out_dir: Path) -> list[Path]:
    """``memprof report tables``: :func:`write_table_reports`, and the shipped cache entries when
    ``out_dir`` is this checkout's ``reports/`` (a report written elsewhere leaves the package alone)."""
    written = write_table_reports(out_dir)
    if Path(out_dir).resolve() == (PACKAGE_DIR.parent / "reports").resolve():
        written += write_shipped_cache()
    return written
