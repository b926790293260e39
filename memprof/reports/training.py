"""``reports/training.md`` and ``training.png``: every model trained on digits, side by side.

The report is rendered from the logs (``train_log.csv``) that ``memprof train`` writes, one run
directory per model under ``runs/digits/`` (``runs/digits/revvgg``, ``runs/digits/revvgg-plain``
for the ``--no-reversible`` twin, ...): training every model for 15 epochs takes hours on a small
CPU, so ``memprof report training`` does not retrain; it reads what the runs logged (final and
best test accuracy, the first epoch at or above 95%, loss and accuracy curves, peak memory and
step time) and says which runs are missing or unfinished. ``notes/train_digits.sh MODEL``
(in a checkout) runs the recipe.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..aggregation.training import TrainingRun, log_rows
from ..rendering.training import plot_training_runs, render_training_report
from .files import atomic_write_bytes, atomic_write_text, figure_png, provenance

__all__ = ["REPORT_COMMAND", "RUNS_DIR", "read_training_runs", "write_training_report"]

#: Where the report looks for run directories (relative to the current directory).
RUNS_DIR = Path("runs/digits")
REPORT_COMMAND = "memprof report training"


def read_training_runs(runs_dir: str | Path = RUNS_DIR) -> list[TrainingRun]:
    """Every ``runs_dir/*/train_log.csv`` with at least one epoch, sorted by run name.

    A run's ``command.txt`` (written by ``notes/train_digits.sh``), when present, is its command.
    """
    runs = []
    for log in sorted(Path(runs_dir).glob("*/train_log.csv")):
        with log.open(newline="") as fh:
            rows = log_rows(csv.DictReader(fh))
        if rows:
            cmd = log.parent / "command.txt"
            runs.append(TrainingRun(log.parent.name, rows, cmd.read_text().strip() if cmd.is_file() else None))
    return runs


def write_training_report(out_dir: Path, runs_dir: str | Path = RUNS_DIR) -> list[Path]:
    """Write ``training.md`` (and ``training.png`` when there are runs) from the runs' logs.

    Returns:
        The paths written.
    """
    runs = read_training_runs(runs_dir)
    out = Path(out_dir)
    written = [atomic_write_text(out / "training.md", provenance(REPORT_COMMAND) + "\n\n"
                                 + render_training_report(runs, runs_dir))]
    if runs:
        written.append(atomic_write_bytes(out / "training.png", figure_png(plot_training_runs(runs), dpi=110)))
    return written
