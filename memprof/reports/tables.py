"""``reports/<model>.md`` and ``.csv``: the per-layer tables of vgg19, revvgg, irevvgg, vit and revvit."""

from __future__ import annotations

from pathlib import Path

from ..api.table import layer_table
from .files import atomic_write_text, provenance

__all__ = ["REPORT_MODELS", "write_table_reports"]

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
