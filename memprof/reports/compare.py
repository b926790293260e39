"""``compare.md`` and ``compare.png``: written by ``memprof compare --out`` and ``memprof report compare``."""

from __future__ import annotations

from pathlib import Path

from ..api.compare import compare_strategies
from ..rendering.compare import StrategyComparison
from .files import atomic_write_bytes, atomic_write_text, figure_png, provenance

__all__ = ["REPORT_BATCH_SIZE", "REPORT_COMMAND", "REPORT_REPEATS", "write_compare_files", "write_compare_reports"]

#: The settings of reports/compare.md and compare.png.
REPORT_BATCH_SIZE = 32
REPORT_REPEATS = 5
REPORT_COMMAND = "memprof report compare"  # = memprof compare --batch-size 32 --repeats 5 --out reports


def write_compare_files(result: StrategyComparison, out_dir: str | Path, command: str) -> list[Path]:
    """Write ``compare.md`` (and ``compare.png`` when timed) under ``out_dir``, each atomically.

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    png = None
    if any(r["time_ratio"] is not None for r in result.rows):
        png = figure_png(result.plot())
    md = (f"{provenance(command)}\n\nStep times are ratios measured side by side in one run; they vary "
          f"from run to run and machine to machine. Memory figures are {result.kind} and deterministic.\n\n"
          + result.to_markdown())
    written = [atomic_write_text(out / "compare.md", md)]
    if png is not None:
        written.append(atomic_write_bytes(out / "compare.png", png))
    return written


def write_compare_reports(out_dir: Path) -> list[Path]:
    """``reports/compare.md`` and ``reports/compare.png``: every CPU strategy at batch 32, estimated memory.

    Takes a few minutes on 2 CPU cores: the step times are real (5 rounds of 5 strategies).

    Returns:
        The paths written.
    """
    result = compare_strategies(batch_size=REPORT_BATCH_SIZE, repeats=REPORT_REPEATS)
    return write_compare_files(result, out_dir, REPORT_COMMAND)
