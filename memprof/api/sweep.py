"""``sweep``: memory of several models over batch sizes, and the savings against the first model.

For each model and batch size it builds the per-layer table (:func:`memprof.api.table.layer_table`)
and profiles one training step (:func:`memprof.api.step.profile_step`); the figures and savings
are computed by :mod:`memprof.aggregation.sweep`, the result renders itself
(:class:`~memprof.rendering.sweep.SweepResult`).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

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
from ..validation import UsageError, parse_batch_sizes, parse_input_shape, parse_mode, parse_names
from ..vocabulary import SWEEP_BATCH_SIZES, SWEEP_MODELS, Mode, dtype_name
from .step import StepArgs, check_step_args, optimizer_label, run_profile_step
from .table import check_table_args, run_layer_table

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_MODELS",
    "Models",
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


#: What ``models`` may be: registered names (``"vgg19,revvgg"`` or a list), a module, a list of
#: names and modules, or a mapping of display names to modules or registered names.
Models = str | nn.Module | Sequence[str | nn.Module] | Mapping[str, str | nn.Module]


@dataclass(frozen=True)
class SweepArgs:
    """Checked arguments of :func:`sweep`.

    Attributes:
        models: the display names, in order (the first is the savings' reference).
        batch_sizes, mode, device, dtype: as given.
        optimizer: the optimizer's label (its name, or the callable's name).
        step: the checked training step (optimizer, settings, inputs, loss, autocast,
            accumulation) at batch 1; each row replaces the batch size and input shape.
        modules: display name -> the user's module (registered models are built by name).
        registered: display name -> registered name, for the models built by the library.
        input_shape: one float sample's shape for every model (None: a registered model's own).
        model_options: options of every registered model's builder (``{"depth": 6}``).
    """

    models: list[str]
    batch_sizes: list[int]
    mode: Mode
    device: torch.device
    dtype: torch.dtype
    optimizer: str
    step: StepArgs
    modules: dict[str, nn.Module] = field(default_factory=dict)
    registered: dict[str, str] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    model_options: dict[str, Any] = field(default_factory=dict)


def _resolve_models(models: Models) -> tuple[list[str], dict[str, nn.Module], dict[str, str]]:
    """(display names, name -> user module, name -> registered name); every name checked."""
    from ..models import list_models

    if isinstance(models, str):
        names = parse_names(models, "model", list_models())
        return names, {}, {n: n for n in names}
    if isinstance(models, nn.Module):
        models = [models]
    items: list[tuple[str, Any]] = (list(models.items()) if isinstance(models, Mapping)
                                    else [(m if isinstance(m, str) else type(m).__name__, m) for m in models])
    if not items:
        raise UsageError(f"no models to sweep; allowed: {', '.join(list_models())} or nn.Module instances")
    names, modules, registered = [], {}, {}
    for name, m in items:
        name = str(name).strip()
        if isinstance(m, str):
            parse_names([m], "model", list_models())
            registered[name] = m.strip()
        elif isinstance(m, nn.Module):
            modules[name] = m
        else:
            raise UsageError(f"model {name!r} is a {type(m).__name__}; allowed: a registered name "
                             f"({', '.join(list_models())}) or an nn.Module")
        if not name or name in names:
            raise UsageError(f"model {name!r} is listed twice; give the models distinct names "
                             "(a mapping name -> module)" if name else "a model needs a name")
        names.append(name)
    return names, modules, registered


def check_sweep_args(
    models: Models = DEFAULT_MODELS,
    batch_sizes: str | Sequence[int] = DEFAULT_BATCH_SIZES,
    mode: str = Mode.ESTIMATED,
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: Any = "sgd",
    model_options: Mapping[str, Any] | None = None,
    *,
    input_shape: Any = None,
    inputs: Any = None,
    loss_fn: Any = None,
    optimizer_settings: Any = None,
    autocast: Any = None,
    accumulation_steps: Any = 1,
) -> SweepArgs:
    """Every check of :func:`sweep`, in one place, before any work starts.

    Every model must take every one of ``model_options``.

    Raises:
        UsageError: naming the bad value and the allowed ones.
    """
    from ..models.registry import check_model_options

    names, modules, registered = _resolve_models(models)
    options = dict(model_options or {})
    if options and modules:
        raise UsageError("model options are for registered models; build your nn.Module with the options instead")
    for name in registered.values():
        check_model_options(name, options)
    sizes = parse_batch_sizes(batch_sizes)
    checked_mode = parse_mode(mode)
    shape = None if input_shape is None else parse_input_shape(input_shape)
    if inputs is None and shape is None and modules:
        raise UsageError(f"model {next(iter(modules))!r} is not registered: give its input shape (input_shape=, "
                         "--input-shape 3,32,32) or its inputs (inputs=, --input NAME:DTYPE:SHAPE[:RANGE])")
    step = check_step_args(1, shape or (3, 32, 32), optimizer, dtype, device, checked_mode is Mode.ESTIMATED,
                           inputs=inputs, loss_fn=loss_fn, optimizer_settings=optimizer_settings, autocast=autocast,
                           accumulation_steps=accumulation_steps)
    return SweepArgs(names, sizes, checked_mode, step.device, step.dtype, optimizer_label(step.optimizer), step,
                     modules, registered, shape, options)


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _input_shape(name: str, args: SweepArgs) -> tuple[int, ...]:
    """One float sample's shape for this model: the one given, else the registered model's (none with inputs)."""
    from ..models import get_model_info

    if args.step.inputs is not None:
        return ()
    if args.input_shape is not None:
        return args.input_shape
    return tuple(get_model_info(args.registered[name]).input_shape_for(args.model_options))


def _measure_row(name: str, model: torch.nn.Module, b: int, args: SweepArgs) -> dict[str, Any]:
    """The four figures of one (model, batch size): its table's totals and its step's profile."""
    base = args.step
    shape = _input_shape(name, args)
    table_model: str | nn.Module = args.registered.get(name) or model
    table = run_layer_table(check_table_args(
        table_model, shape or None, b, dtype_name(args.dtype),
        model_options=args.model_options if isinstance(table_model, str) else None, inputs=base.inputs),
                            None if isinstance(table_model, str) else model)
    step = replace(base, batch_size=b, input_shape=shape)
    return row_figures(table.totals, run_profile_step(model, step, name=name))


def _sweep_model(name: str, args: SweepArgs, bar: Any) -> list[dict[str, Any]]:
    """One model's rows; after an out-of-memory row (measured mode) the larger sizes are skipped."""
    from ..models import get_model

    torch.manual_seed(0)
    model = (args.modules[name] if name in args.modules
             else get_model(args.registered.get(name, name), **args.model_options))
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
    recipe = args.step.recipe
    if recipe is not None and recipe.autocast is not None:
        notes.append(f"The step peaks run under autocast ({dtype_name(recipe.autocast)}); the table's columns "
                     f"(seed conv., autograd-saved) come from a forward in {dtype_name(args.dtype)} without "
                     "autocast.")
    if args.model_options:
        from ..models.registry import format_options

        notes.append(f"Every model built with {format_options(args.model_options)}.")
    return SweepResult.from_data(SweepData(rows, args.models, args.batch_sizes, args.mode, str(args.device),
                                           dtype_name(args.dtype), args.optimizer, notes))


def sweep(
    models: Models = DEFAULT_MODELS,
    batch_sizes: str | Sequence[int] = DEFAULT_BATCH_SIZES,
    *,
    mode: str = Mode.ESTIMATED,
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: str | Callable[[Any], torch.optim.Optimizer] = "sgd",
    input_shape: Sequence[int] | str | None = None,
    inputs: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    optimizer_settings: dict[str, Any] | None = None,
    autocast: str | torch.dtype | None = None,
    accumulation_steps: int = 1,
    progress: bool | None = True,
    model_options: Mapping[str, Any] | None = None,
) -> SweepResult:
    """Memory of each model at each batch size, and the savings against the first model.

    In measured mode a batch size that runs out of memory becomes a row with status
    ``out of memory`` (figures empty) and the sweep goes on; the larger sizes of that model are
    not tried (status ``skipped``), since they would fail as well.

    Args:
        models: registered names, ``"vgg19,revvgg"`` or a list; or your own ``nn.Module``, a list
            of names and modules (a module is named by its class), or a mapping of display names
            to modules or registered names (``{"lstm": MyLSTM(), "ref": "vgg19"}``). The first is
            the reference. A module is not modified (each step runs on a copy).
        batch_sizes: ``"1,8,64"``, ``"1,2,4,...,1024"`` (NOTE [ Batch-size progressions ]) or
            a list of integers.
        mode: ``estimated`` (FakeTensorMode: nothing allocated, default) or ``measured``.
        device: ``cpu`` or ``cuda`` (a CUDA estimate applies the caching-allocator model).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        optimizer: ``sgd`` (momentum 0.9, the deck's), ``adam``, ``adamw`` or ``params -> Optimizer``.
        input_shape: one float sample's shape for every model (default: a registered model's own;
            required for a module unless ``inputs`` is given).
        inputs, loss_fn, optimizer_settings, autocast, accumulation_steps: the training step, as
            for :func:`memprof.profile_step` (``inputs``: example tensors, a tuple or dict of
            them, or :class:`~memprof.recording.user_step.InputSpec` s; the batch dimension
            follows each batch size). They apply to every model of the sweep.
        progress: show a tqdm progress bar on stderr (None: only on a terminal).
        model_options: options of every model's builder (``{"depth": 6}`` for ``vit,revvit``).

    Returns:
        The :class:`~memprof.rendering.sweep.SweepResult`.

    Raises:
        UsageError: for any bad argument, before any work starts.
    """
    return run_sweep(check_sweep_args(models, batch_sizes, mode, device, dtype, optimizer, model_options,
                                      input_shape=input_shape, inputs=inputs, loss_fn=loss_fn,
                                      optimizer_settings=optimizer_settings, autocast=autocast,
                                      accumulation_steps=accumulation_steps), progress=progress)
