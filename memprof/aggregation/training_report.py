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
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..units import format_bytes

__all__ = ["RECIPE_COMMAND", "RUNS_DIR", "TrainingRun", "read_training_runs", "render_training_report",
           "plot_training_runs", "write_training_report"]

#: Where the report looks for run directories (relative to the current directory).
RUNS_DIR = Path("runs/digits")
#: The recipe every run uses: the deck's (SGD, lr 0.1, momentum 0.9; lr / 10 every 50 of 300
#: epochs), its first three phases scaled to 15 epochs (lr / 10 every 5), weight decay 5e-4.
RECIPE_COMMAND = ("memprof train --dataset digits --model MODEL [--no-reversible] --epochs 15 --batch-size 64 "
                  "--lr 0.1 --momentum 0.9 --weight-decay 5e-4 --lr-step 5 --out runs/digits/RUN")
EPOCHS = 15
TARGET = 0.95


@dataclass
class TrainingRun:
    """One run's log: its name (the directory), and one dict per epoch (floats)."""

    name: str
    rows: list[dict[str, float]]
    command: str | None = None

    @property
    def model(self) -> str:
        """The model name (the run name without a ``-plain`` suffix)."""
        return self.name.removesuffix("-plain")

    @property
    def reversible(self) -> bool:
        """False for a ``-plain`` twin."""
        return not self.name.endswith("-plain")

    def column(self, key: str) -> list[float]:
        """One column over the epochs."""
        return [r[key] for r in self.rows]

    def first_epoch_at(self, acc: float) -> int | None:
        """The first epoch whose test accuracy is at least ``acc``."""
        return next((int(r["epoch"]) for r in self.rows if r["test_acc"] >= acc), None)


def read_training_runs(runs_dir: str | Path = RUNS_DIR) -> list[TrainingRun]:
    """Every ``runs_dir/*/train_log.csv`` with at least one epoch, sorted by run name."""
    runs = []
    root = Path(runs_dir)
    for log in sorted(root.glob("*/train_log.csv")):
        with log.open(newline="") as fh:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None) and k != "peak_mem_source"}
                    for r in csv.DictReader(fh)]
        if rows:
            cmd = log.parent / "command.txt"
            runs.append(TrainingRun(log.parent.name, rows, cmd.read_text().strip() if cmd.is_file() else None))
    return runs


def _reversible_label(run: TrainingRun) -> str:
    """yes / no (twin) for a model with reversible sequences; '-' for a plain model (vgg19, vit)."""
    from ..models import get_model, list_models
    from ..reversible import ReversibleSequence

    if run.model in list_models() and not any(isinstance(m, ReversibleSequence)
                                              for m in get_model(run.model).modules()):
        return "-"
    return "yes" if run.reversible else "no (twin)"


def render_training_report(runs: list[TrainingRun], runs_dir: str | Path = RUNS_DIR) -> str:
    """The Markdown body of ``reports/training.md`` (without the provenance line)."""
    from tabulate import tabulate

    from ..models import list_models

    lines = ["# Training on real data: scikit-learn's digits", "",
             f"Every run: `{RECIPE_COMMAND}`. 1,437 training and 360 test images (fixed split), "
             "shifted by up to 4 pixels for training. Test accuracy is measured after every epoch in eval mode "
             f"(BatchNorm running statistics). Target: at least {TARGET:.0%} within {EPOCHS} epochs, a reversible "
             "model within 1 point of its `--no-reversible` twin.", ""]
    if not runs:
        lines.append(f"No runs found under `{runs_dir}/`: run the command above for each model first.")
        return "\n".join(lines) + "\n"
    table = []
    by_name = {r.name: r for r in runs}
    for run in runs:
        last = run.rows[-1]
        first = run.first_epoch_at(TARGET)
        twin = by_name.get(f"{run.name}-plain") if run.reversible else by_name.get(run.model)
        gap = ""
        if twin is not None:
            n = min(len(run.rows), len(twin.rows))
            gap = f"{(run.rows[n - 1]['test_acc'] - twin.rows[n - 1]['test_acc']) * 100:+.1f} (epoch {n})"
        peak = max(run.column("peak_mem_rank0_bytes")) if "peak_mem_rank0_bytes" in last else None
        steps = sorted(run.column("step_time_s"))
        table.append([
            run.model, _reversible_label(run), f"{int(last['epoch'])}/{EPOCHS}",
            f"{last['test_acc']:.1%}", f"{max(run.column('test_acc')):.1%}", "-" if first is None else str(first),
            f"{last['loss']:.3f}", gap, "" if peak is None else format_bytes(peak, "MiB"),
            f"{steps[len(steps) // 2]:.2f}",
        ])
    lines.append(tabulate(table, headers=["model", "reversible", "epochs run", "final test acc", "best test acc",
                                          f"first epoch >= {TARGET:.0%}", "final train loss",
                                          "acc. minus twin's, points", "peak RSS (measured)",
                                          "step time, s (measured, median)"],
                          tablefmt="github", disable_numparse=True))
    lines += ["", "![loss and test accuracy per epoch](training.png)", "", "Runs (from each run's `command.txt`, "
              "written by `notes/train_digits.sh`; the last `--out` wins):", ""]
    lines += [f"- {r.name}: `{r.command}`" if r.command else f"- {r.name}: (no command.txt)" for r in runs]
    lines.append("")
    unfinished = [r.name for r in runs if int(r.rows[-1]["epoch"]) < EPOCHS]
    missing = [m for m in list_models() if m not in {r.model for r in runs}]
    if unfinished:
        lines.append(f"- Unfinished (the log stops early; the run was still going or was stopped): "
                     f"{', '.join(unfinished)}.")
    if missing:
        lines.append(f"- Not trained yet: {', '.join(missing)}.")
    lines += [
        "- peak RSS: the process's resident-set high-water mark within each epoch (VmHWM after a reset; the "
        "largest epoch shown): everything the process holds (Python, the data, the model, optimizer state), "
        "an upper bound on training memory; `memprof profile` isolates the activations.",
        "- step time: wall seconds per optimizer step (forward, backward, update; data loading excluded), on a "
        "2-core machine shared with other jobs: compare runs made at the same time, not absolute values.",
        "- MiB = 2^20 bytes.",
    ]
    return "\n".join(lines) + "\n"


def plot_training_runs(runs: list[TrainingRun], path: str | Path | None = None) -> Any:
    """Training loss and test accuracy per epoch, one line per run; returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        style = "-" if run.reversible else "--"
        epochs = run.column("epoch")
        ax_loss.plot(epochs, run.column("loss"), style, marker=".", label=run.name)
        ax_acc.plot(epochs, [100 * a for a in run.column("test_acc")], style, marker=".", label=run.name)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (mean over the epoch)")
    ax_loss.set_yscale("log")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy, %")
    ax_acc.axhline(100 * TARGET, color="grey", lw=0.8, ls=":")
    ax_acc.set_ylim(0, 100)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0.5, EPOCHS + 0.5)
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.suptitle("Digits, the deck's recipe scaled to 15 epochs (dashed: reversible=False twins)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def write_training_report(out_dir: Path, runs_dir: str | Path = RUNS_DIR) -> list[Path]:
    """Write ``training.md`` (and ``training.png`` when there are runs) from the runs' logs.

    Returns:
        The paths written.
    """
    from ..reporting import atomic_write_bytes, atomic_write_text, provenance

    runs = read_training_runs(runs_dir)
    out = Path(out_dir)
    written = [atomic_write_text(out / "training.md", provenance("memprof report training") + "\n\n"
                                 + render_training_report(runs, runs_dir))]
    if runs:
        buf = io.BytesIO()
        plot_training_runs(runs).savefig(buf, format="png", dpi=110)
        written.append(atomic_write_bytes(out / "training.png", buf.getvalue()))
    return written
