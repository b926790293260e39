"""``reports/transformers.md`` and ``.png`` (ViT against Rev-ViT), and the transformer section of ``memory.md``.

The figures are measured by :mod:`memprof.api.transformers` and rendered by
:mod:`memprof.rendering.transformers`; ``benchmarks/revvit_depth.py`` prints the same tables.
"""

from __future__ import annotations

from pathlib import Path

from ..aggregation.transformers import REPORT_BATCH_SIZE, TIMING_BATCH_SIZE
from ..api.transformers import depth_sweep, time_twins
from ..recording.threads import one_thread
from ..rendering.transformers import plot_depth_sweep, render_transformer_section
from .files import atomic_write_bytes, atomic_write_text, figure_png, provenance

__all__ = ["REPORT_COMMAND", "transformer_memory_section", "write_transformer_reports"]

REPORT_COMMAND = "memprof report transformers"


def write_transformer_reports(out_dir: Path) -> list[Path]:
    """``reports/transformers.md`` and ``transformers.png``: the depth sweep and the twin timing.

    Takes several minutes on 2 CPU cores (the step times are real, at batch 32).

    Returns:
        The paths written.
    """
    with one_thread():
        rows = depth_sweep()
    timing = time_twins(batch_size=TIMING_BATCH_SIZE)
    md = (f"{provenance(REPORT_COMMAND)}\n\n# ViT and Rev-ViT\n\n"
          "`python benchmarks/revvit_depth.py` prints the same figures.\n\n"
          + render_transformer_section(rows, timing, REPORT_BATCH_SIZE, heading=False)
          + "\n![activation peak against depth](transformers.png)\n")
    png = figure_png(plot_depth_sweep(rows), dpi=110)
    out = Path(out_dir)
    return [atomic_write_text(out / "transformers.md", md), atomic_write_bytes(out / "transformers.png", png)]


def transformer_memory_section(batch_size: int = REPORT_BATCH_SIZE) -> str:
    """The transformer section of ``reports/memory.md``: vit and revvit at depth 12 (estimated).

    Only depth 12 and no timing, so that ``memprof report memory`` stays quick; the depth sweep
    and the step times are in ``reports/transformers.md``.
    """
    with one_thread():
        rows = depth_sweep((12,), batch_size)
    return (render_transformer_section(rows, None, batch_size)
            + "\nThe sweep over depth (6-48) and the step time against the twin: [transformers.md](transformers.md).\n")
