"""``reports/training.md``'s text and ``training.png``'s figure from the runs of :mod:`memprof.aggregation.training`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ..aggregation.training import (
    BOUND_EPOCHS,
    EPOCHS,
    RECIPE_COMMAND,
    TARGET,
    TrainingRun,
    missing_models,
    summarise_runs,
    twin_gaps_over_seeds,
    unfinished_runs,
)
from ..units import format_bytes
from .plots import _new_figure

__all__ = ["plain_models", "plot_training_runs", "render_training_report"]


def plain_models(names: Sequence[str]) -> set[str]:
    """The registered models of ``names`` without a reversible sequence (vgg19, vit): no twin to set against."""
    from ..models import get_model, list_models
    from ..reversible import ReversibleSequence

    known = set(list_models())
    return {n for n in names if n in known
            and not any(isinstance(m, ReversibleSequence) for m in get_model(n).modules())}


def _reversible_label(run: TrainingRun, plain: Collection[str]) -> str:
    """yes / no (twin) for a model with reversible sequences; '-' for a plain model (vgg19, vit)."""
    if run.model in plain:
        return "-"
    return "yes" if run.reversible else "no (twin)"


def render_training_report(runs: Sequence[TrainingRun], runs_dir: str | Path,
                           known_models: Sequence[str] | None = None) -> str:
    """The Markdown body of ``reports/training.md`` (without the provenance line).

    Args:
        runs: the runs, in display order.
        runs_dir: where they were read from (named when there are none).
        known_models: the models a complete report covers (default: every registered model).
    """
    from tabulate import tabulate

    if known_models is None:
        from ..models import list_models

        known_models = list_models()
    lines = ["# Training on real data: scikit-learn's digits", "",
             f"Every run (a row naming a setting, e.g. `warmup-epochs 3`, changed that one): `{RECIPE_COMMAND}`. "
             "1,437 training and 360 test images (fixed split), "
             "shifted by up to 4 pixels for training. Test accuracy is measured after every epoch in eval mode "
             f"(BatchNorm running statistics). Target: at least {TARGET:.0%} within {BOUND_EPOCHS} epochs (the runs take "
             f"{EPOCHS}), a reversible "
             "model within 1 point of its `--no-reversible` twin.", ""]
    if not runs:
        lines.append(f"No runs found under `{runs_dir}/`: run the command above for each model first.")
        return "\n".join(lines) + "\n"
    table = []
    plain = plain_models(sorted({r.model for r in runs}))
    summaries = summarise_runs(runs)
    for s in summaries:
        gap = "" if s.twin_gap is None else f"{s.twin_gap[0]:+.1f} (epoch {s.twin_gap[1]})"
        table.append([
            s.run.label(),
            _reversible_label(s.run, plain), f"{s.epochs_run}/{EPOCHS}",
            f"{s.final_acc:.1%}", f"{s.best_acc:.1%}", "-" if s.first_at_target is None else str(s.first_at_target),
            f"{s.final_loss:.3f}", gap, "" if s.peak_bytes is None else format_bytes(s.peak_bytes, "MiB"),
            f"{s.median_step_s:.2f}",
        ])
    lines.append(tabulate(table, headers=["model", "reversible", "epochs run", "final test acc", "best test acc",
                                          f"first epoch >= {TARGET:.0%}", "final train loss",
                                          "acc. minus twin's, points", "peak RSS (measured)",
                                          "step time, s (measured, median)"],
                          tablefmt="github", disable_numparse=True))
    seeds = twin_gaps_over_seeds(summaries)
    if seeds:
        lines += ["", ("Twin gaps over seeds (each seed seeds the initialisation, the shuffling and the augmentation "
                       "of both twins; one pair's gap is one draw):"), ""]
        for label, gaps in seeds.items():
            points = [g for _, g in gaps]
            lines.append(f"- {label}: " + ", ".join(f"{g:+.1f} (seed {seed})" for seed, g in gaps)
                         + f"; mean {sum(points) / len(points):+.2f} points over {len(points)} seeds")
    lines += ["", "![loss and test accuracy per epoch](training.png)", "", "Runs (from each run's `command.txt`, "
              "written by `notes/train_digits.sh`):", ""]
    lines += [f"- {r.name}: `{r.command}`" if r.command else f"- {r.name}: (no command.txt)" for r in runs]
    lines.append("")
    unfinished = unfinished_runs(runs)
    missing = missing_models(runs, known_models)
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


def plot_training_runs(runs: Sequence[TrainingRun], path: str | Path | None = None) -> Any:
    """Training loss and test accuracy per epoch, one line per run; returns the Figure."""
    fig = _new_figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
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
    fig.suptitle(f"Digits, the deck's recipe scaled to {EPOCHS} epochs (dashed: reversible=False twins)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
