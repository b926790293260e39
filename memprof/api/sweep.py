"""``sweep``: memory of several models over batch sizes, and the savings against the first model.

For each model and batch size it builds the per-layer table (:func:`memprof.api.table.layer_table`)
and profiles one training step (:func:`memprof.api.step.profile_step`); the figures and savings
are computed by :mod:`memprof.aggregation.sweep`, the result renders itself
(:class:`~memprof.rendering.sweep.SweepResult`).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..aggregation.sweep import (
    STATUS_OK,
    STATUS_OOM,
    STATUS_SKIPPED,
    SweepData,
    add_savings,
    empty_row,
    row_figures,
)
from ..errors import is_out_of_memory, out_of_memory
from ..rendering.sweep import SweepResult
from ..validation import parse_batch_sizes, parse_mode, parse_names
from ..vocabulary import SWEEP_BATCH_SIZES, SWEEP_MODELS, Mode, dtype_name
from .step import StepArgs, check_step_args, run_profile_step
from .table import layer_table

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_MODELS",
    "SweepArgs",
    "check_sweep_args",
    "is_out_of_memory",
    "run_sweep",
    "sweep",
]

#: The models swept by default; the first is the reference of the savings.
DEFAULT_MODELS: tuple[str, ...] = SWEEP_MODELS
#: The default batch sizes: a factor of 8 apart, 1 to 512 (12 estimates, under a minute on 2 cores).
DEFAULT_BATCH_SIZES: tuple[int, ...] = SWEEP_BATCH_SIZES


@dataclass(frozen=True)
class SweepArgs:
    """Checked arguments of :func:`sweep`."""

    models: list[str]
    batch_sizes: list[int]
    mode: Mode
    device: torch.device
    dtype: torch.dtype
    optimizer: str
    model_options: dict[str, Any] = field(default_factory=dict)


def check_sweep_args(
    models: str | Sequence[str] = DEFAULT_MODELS,
    batch_sizes: str | Sequence[int] = DEFAULT_BATCH_SIZES,
    mode: str = Mode.ESTIMATED,
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: str = "sgd",
    model_options: Mapping[str, Any] | None = None,
) -> SweepArgs:
    """Every check of :func:`sweep`, in one place, before any work starts.

    Every model must take every one of ``model_options``.

    Raises:
        UsageError: naming the bad value and the allowed ones.
    """
    from ..models import list_models
    from ..models.registry import check_model_options

    names = parse_names(models, "model", list_models())
    options = dict(model_options or {})
    for name in names:
        check_model_options(name, options)
    sizes = parse_batch_sizes(batch_sizes)
    checked_mode = parse_mode(mode)
    step = check_step_args(1, (3, 32, 32), optimizer, dtype, device, checked_mode is Mode.ESTIMATED)
    return SweepArgs(names, sizes, checked_mode, step.device, step.dtype, step.optimizer, options)


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _measure_row(name: str, model: torch.nn.Module, b: int, args: SweepArgs) -> dict[str, Any]:
    """The four figures of one (model, batch size): its table's totals and its step's profile."""
    from ..models import get_model_info

    table = layer_table(name, batch_size=b, dtype=dtype_name(args.dtype), model_options=args.model_options)
    shape = get_model_info(name).input_shape_for(args.model_options)
    step = StepArgs(b, shape, args.optimizer, args.dtype, args.device, args.mode is Mode.ESTIMATED)
    return row_figures(table.totals, run_profile_step(model, step, name=name))


def _sweep_model(name: str, args: SweepArgs, bar: Any) -> list[dict[str, Any]]:
    """One model's rows; after an out-of-memory row (measured mode) the larger sizes are skipped."""
    from ..models import get_model

    torch.manual_seed(0)
    model = get_model(name, **args.model_options)
    rows, failed = [], False
    for b in args.batch_sizes:
        bar.set_postfix_str(f"{name} batch {b}")
        row = empty_row(name, b, STATUS_SKIPPED if failed else STATUS_OK)
        if not failed:
            try:
                row.update(_measure_row(name, model, b, args))
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is caught
                if args.mode is not Mode.MEASURED or not is_out_of_memory(exc):
                    raise
                row["status"], failed = out_of_memory(exc, b, args.device).status, True  # "out of memory at batch N: ..."
                _free_memory(args.device)
        rows.append(row)
        bar.update(1)
    del model
    _free_memory(args.device)
    return rows


def run_sweep(args: SweepArgs, *, progress: bool | None = True) -> SweepResult:
    """The sweep for checked arguments (:func:`check_sweep_args`); nothing is checked again."""
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(args.models) * len(args.batch_sizes), desc="memprof sweep", unit="step",
               disable=(None if progress is None else not progress), leave=False)
    try:
        for name in args.models:
            rows.extend(_sweep_model(name, args, bar))
    finally:
        bar.close()
    add_savings(rows, args.models[0])
    notes = []
    if args.mode is Mode.MEASURED and args.device.type == "cpu":
        notes.append("Measured on the CPU: peaks are the c10 CPU allocator's (torch.profiler memory events).")
    if args.model_options:
        from ..models.registry import format_options

        notes.append(f"Every model built with {format_options(args.model_options)}.")
    return SweepResult.from_data(SweepData(rows, args.models, args.batch_sizes, args.mode, str(args.device),
                                           dtype_name(args.dtype), args.optimizer, notes))


def sweep(
    models: str | Sequence[str] = DEFAULT_MODELS,
    batch_sizes: str | Sequence[int] = DEFAULT_BATCH_SIZES,
    *,
    mode: str = Mode.ESTIMATED,
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: str = "sgd",
    progress: bool | None = True,
    model_options: Mapping[str, Any] | None = None,
) -> SweepResult:
    """Memory of each model at each batch size, and the savings against the first model.

    In measured mode a batch size that runs out of memory becomes a row with status
    ``out of memory`` (figures empty) and the sweep goes on; the larger sizes of that model are
    not tried (status ``skipped``), since they would fail as well.

    Args:
        models: registered names, ``"vgg19,revvgg"`` or a list; the first is the reference.
        batch_sizes: ``"1,8,64"``, ``"1,2,4,...,1024"`` (NOTE [ Batch-size progressions ]) or
            a list of integers.
        mode: ``estimated`` (FakeTensorMode: nothing allocated, default) or ``measured``.
        device: ``cpu`` or ``cuda`` (a CUDA estimate applies the caching-allocator model).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        optimizer: ``sgd`` (momentum 0.9, the deck's) or ``adam``.
        progress: show a tqdm progress bar on stderr (None: only on a terminal).
        model_options: options of every model's builder (``{"depth": 6}`` for ``vit,revvit``).

    Returns:
        The :class:`~memprof.rendering.sweep.SweepResult`.

    Raises:
        UsageError: for any bad argument, before any work starts.
    """
    return run_sweep(check_sweep_args(models, batch_sizes, mode, device, dtype, optimizer, model_options),
                     progress=progress)
