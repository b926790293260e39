"""Training runs side by side: each run's log as a :class:`TrainingRun`, and the figures of ``reports/training.md``.

The report compares every model trained on scikit-learn's digits with the deck's recipe
(:data:`RECIPE_COMMAND`): final and best test accuracy, the first epoch at or above
:data:`TARGET`, the gap to the ``--no-reversible`` twin, peak memory and step time. The logs are
read by :mod:`memprof.reports.training`; this module only computes (no file I/O).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BOUND_EPOCHS", "EPOCHS", "RECIPE_COMMAND", "TARGET", "TRAIN_DEFAULTS", "RunSummary", "TrainingRun", "log_rows", "missing_models",
           "summarise_runs", "twin_gaps_over_seeds", "unfinished_runs"]

#: The recipe every run uses: the deck's (SGD, lr 0.1, momentum 0.9, no warm-up; lr / 10 every 50
#: of 300 epochs), its first three phases scaled to the bound's 15 epochs (lr / 10 every 5), and
#: weight decay 5e-4 (the deck gives none; the usual CIFAR choice).
RECIPE_COMMAND = ("memprof train --dataset digits --model MODEL [--no-reversible] --epochs 15 --batch-size 64 "
                  "--lr 0.1 --momentum 0.9 --weight-decay 5e-4 --lr-step 5 --out runs/digits/RUN")
#: Epochs of each run.
EPOCHS = 15
#: The numeric settings a run may change from :data:`RECIPE_COMMAND` (its row in the report says so),
#: each with ``memprof train``'s default, the value a command that does not give the flag ran with
#: (``memprof.train.config.TrainConfig``'s; a test holds the two equal: this layer may not import it).
TRAIN_DEFAULTS: dict[str, float] = {"--epochs": 300, "--batch-size": 128, "--lr": 0.1, "--momentum": 0.9,
                                    "--weight-decay": 0.0, "--lr-step": 50, "--warmup-epochs": 0, "--gamma": 0.1,
                                    "--seed": 0}
#: Issue 15's bound: the test accuracy must reach :data:`TARGET` within this many epochs.
BOUND_EPOCHS = 15
#: Issue 15's bound: at least this test accuracy within :data:`BOUND_EPOCHS` epochs.
TARGET = 0.95
#: Log columns that are not numbers.
_TEXT_COLUMNS = ("peak_mem_source",)


@dataclass
class TrainingRun:
    """One run's log: its name (the directory), and one dict per epoch (floats)."""

    name: str
    rows: list[dict[str, float]]
    command: str | None = None

    def _values(self, flag: str) -> list[str]:
        """Every value the run's command gives ``flag`` (``--model-option`` repeats)."""
        words = (self.command or "").split()
        return [b for a, b in zip(words, words[1:]) if a == flag]

    def _option(self, flag: str) -> str | None:
        return next(iter(self._values(flag)), None)

    @property
    def model(self) -> str:
        """The model name: the command's ``--model``, else the run name without a ``-plain`` suffix."""
        return self._option("--model") or self.name.removesuffix("-plain")

    @property
    def recipe_changes(self) -> list[str]:
        """``FLAG VALUE`` for each setting the run ran with that differs from :data:`RECIPE_COMMAND`'s; a flag
        the command does not give counts as ``memprof train``'s default (:data:`TRAIN_DEFAULTS`)."""
        recipe = TrainingRun("recipe", [], RECIPE_COMMAND)
        changes = []
        for flag, default in TRAIN_DEFAULTS.items():
            mine, theirs = self._option(flag), recipe._option(flag)
            if float(mine or default) != float(theirs or default):
                changes.append(f"{flag.lstrip('-')} {mine or f'{default:g}'}")
        return changes

    def label(self, with_seed: bool = True) -> str:
        """The model, then its options and the recipe settings it changed in parentheses
        (``vgg19 (warmup-epochs 3, seed 1)``); ``with_seed=False`` leaves the seed out."""
        changes = [c for c in self.recipe_changes if with_seed or not c.startswith("seed ")]
        extra = self.model_options + changes
        return self.model + (f" ({', '.join(extra)})" if extra else "")

    @property
    def seed(self) -> int:
        """The command's ``--seed`` (``memprof train``'s default, 0, when it gives none)."""
        return int(float(self._option("--seed") or TRAIN_DEFAULTS["--seed"]))

    @property
    def model_options(self) -> list[str]:
        """The ``--model-option KEY=N`` values of the run's command (empty: the registered size)."""
        return self._values("--model-option")

    @property
    def reversible(self) -> bool:
        """False for a ``--no-reversible`` twin (from the command, else a ``-plain`` run name)."""
        if self.command:
            return "--no-reversible" not in self.command.split()
        return not self.name.endswith("-plain")

    def column(self, key: str) -> list[float]:
        """One column over the epochs."""
        return [r[key] for r in self.rows]

    def first_epoch_at(self, acc: float) -> int | None:
        """The first epoch whose test accuracy is at least ``acc``."""
        return next((int(r["epoch"]) for r in self.rows if r["test_acc"] >= acc), None)


def log_rows(records: Iterable[Mapping[str, str | None]]) -> list[dict[str, float]]:
    """``train_log.csv``'s rows (as ``csv.DictReader`` gives them) as floats; empty cells left out."""
    return [{k: float(v) for k, v in r.items() if v not in ("", None) and k not in _TEXT_COLUMNS}
            for r in records]


@dataclass(frozen=True)
class RunSummary:
    """The figures of one run in the report's table.

    Attributes:
        run: the run.
        epochs_run: the last logged epoch.
        final_acc, best_acc: test accuracy after the last epoch, and the best over the epochs.
        first_at_target: the first epoch at or above :data:`TARGET` (None: never).
        final_loss: the last epoch's mean training loss.
        twin_gap: (points, epoch): this run's test accuracy minus its twin's at the last epoch
            both logged (None without a twin).
        peak_bytes: the largest per-epoch peak memory of rank 0 (None when not logged).
        median_step_s: the median over the epochs of the mean step time.
    """

    run: TrainingRun
    epochs_run: int
    final_acc: float
    best_acc: float
    first_at_target: int | None
    final_loss: float
    twin_gap: tuple[float, int] | None
    peak_bytes: float | None
    median_step_s: float


def summarise_runs(runs: Sequence[TrainingRun]) -> list[RunSummary]:
    """One :class:`RunSummary` per run, each reversible run set against its ``-plain`` twin."""
    by_name = {r.name: r for r in runs}
    out = []
    for run in runs:
        last = run.rows[-1]
        # A twin is the run of the same name with (or without) "-plain": runs of one model with
        # different settings ("revvit", "revvit-warmup3") each have their own.
        twin = by_name.get(f"{run.name}-plain") if run.reversible else by_name.get(run.name.removesuffix("-plain"))
        gap = None
        if twin is not None:
            n = min(len(run.rows), len(twin.rows))
            gap = ((run.rows[n - 1]["test_acc"] - twin.rows[n - 1]["test_acc"]) * 100, n)
        peak = max(run.column("peak_mem_rank0_bytes")) if "peak_mem_rank0_bytes" in last else None
        steps = sorted(run.column("step_time_s"))
        out.append(RunSummary(run, int(last["epoch"]), last["test_acc"], max(run.column("test_acc")),
                              run.first_epoch_at(TARGET), last["loss"], gap, peak, steps[len(steps) // 2]))
    return out


def twin_gaps_over_seeds(summaries: Sequence[RunSummary]) -> dict[str, list[tuple[int, float]]]:
    """The twin gaps of each reversible setting trained with more than one seed.

    Runs of one model with the same options and recipe changes, apart from ``--seed``, are one
    setting; a run without ``--seed`` is seed 0 (``memprof train``'s default).

    Returns:
        ``{label: [(seed, points), ...]}`` sorted by seed, for the settings with two or more seeds;
        the label is the model, then its options and non-seed changes in parentheses.
    """
    groups: dict[str, list[tuple[int, float]]] = {}
    for s in summaries:
        if not s.run.reversible or s.twin_gap is None:
            continue
        groups.setdefault(s.run.label(with_seed=False), []).append((s.run.seed, s.twin_gap[0]))
    return {k: sorted(v) for k, v in sorted(groups.items()) if len(v) > 1}


def unfinished_runs(runs: Sequence[TrainingRun], epochs: int = EPOCHS) -> list[str]:
    """The runs whose log stops before ``epochs``."""
    return [r.name for r in runs if int(r.rows[-1]["epoch"]) < epochs]


def missing_models(runs: Sequence[TrainingRun], known: Iterable[str]) -> list[str]:
    """The models of ``known`` with no run at all."""
    trained: set[Any] = {r.model for r in runs}
    return [m for m in known if m not in trained]
