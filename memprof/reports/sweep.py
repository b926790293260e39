"""``sweep.csv`` and ``sweep.png``: written by ``memprof sweep --out`` and ``memprof report sweep``."""

from __future__ import annotations

from pathlib import Path

from ..api.sweep import sweep
from ..rendering.sweep import SweepResult
from .files import atomic_write_bytes, atomic_write_text, figure_png, provenance

__all__ = ["REPORT_COMMAND", "write_sweep_files", "write_sweep_reports"]

#: The command whose output the sweep reports are (the defaults).
REPORT_COMMAND = "memprof report sweep"  # same figures as `memprof sweep --out reports`


def write_sweep_files(result: SweepResult, out_dir: str | Path, command: str) -> list[Path]:
    """Write ``sweep.csv``, ``sweep.md`` and ``sweep.png`` under ``out_dir``, each atomically.

    The CSV is plain CSV (``pandas.read_csv`` reads its header); its provenance, the settings
    and the notes are in ``sweep.md`` beside it.

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    png = figure_png(result.plot())
    md = (f"{provenance(command)}\n\n`sweep.csv` beside this file holds the same rows (bytes; savings in percent) "
          f"and `sweep.png` the plot.\n\n{result.to_markdown()}")
    return [atomic_write_text(out / "sweep.csv", result.to_csv()), atomic_write_text(out / "sweep.md", md),
            atomic_write_bytes(out / "sweep.png", png)]


def write_sweep_reports(out_dir: Path) -> list[Path]:
    """``reports/sweep.csv``, ``sweep.md`` and ``sweep.png``: the default sweep (estimated, CPU, float32).

    Returns:
        The paths written.
    """
    result = sweep(progress=False)
    return write_sweep_files(result, out_dir, REPORT_COMMAND)
