"""Reports: `memprof report` regenerates every file under ``reports/`` with one command.

Each report is a generator ``write(out_dir: Path) -> list[Path]`` registered below by import
path, so that ``memprof report`` imports only what it runs. Every generated file says which
command produced it (:func:`~memprof.reports.files.provenance`) and is written atomically
(:mod:`memprof.reports.files`). The ``write_*`` functions of the CLI verbs live here too.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..validation import check_choice
from .files import atomic_write_bytes, atomic_write_text, provenance

__all__ = ["REPORTS", "atomic_write_bytes", "atomic_write_text", "generate_reports", "provenance"]

#: report name -> "module:function" writing it. Order is the order of generation.
REPORTS: dict[str, str] = {
    "tables": "memprof.reports.tables:write_tables",  # and memprof/shipped_cache/
    "sweep": "memprof.reports.sweep:write_sweep_reports",
    "compare": "memprof.reports.compare:write_compare_reports",
    "memory": "memprof.reports.memory:write_memory_report",
    "transformers": "memprof.reports.transformers:write_transformer_reports",
    "training": "memprof.reports.training:write_training_report",
    "readme": "memprof.reports.index:write_reports_index",  # keep last: it links what the others wrote
}


def _load(spec: str) -> Callable[[Path], list[Path]]:
    module_name, func_name = spec.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def generate_reports(out_dir: str | os.PathLike[str] = "reports", only: Iterable[str] | None = None) -> list[Path]:
    """Regenerate the reports (all, or those named in ``only``) under ``out_dir``.

    Returns:
        The paths written.

    Raises:
        UsageError: for a report name that does not exist, listing the known ones.
    """
    names = list(REPORTS) if only is None else [check_choice("report", n, REPORTS) for n in only]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        written.extend(_load(REPORTS[name])(out))
    return written
