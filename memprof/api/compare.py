"""``compare_strategies``: a model family's memory-saving strategies profiled and timed side by side.

Each strategy of the family (:data:`memprof.aggregation.compare.FAMILIES`: ``vgg``, VGG-19 and
the reversible VGGs; ``vit``, ViT and Rev-ViT) is profiled with
:func:`memprof.api.step.profile_step` (activation peak and step peak, estimated or measured)
and timed for real, all strategies in one run, their steps interleaved round by round
(:func:`memprof.recording.runner.time_steps`, NOTE [ Step times side by side ]) so that a
change in the machine's load hits them alike; the step time is reported as a ratio to plain's.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..aggregation.compare import (
    ComparisonData,
    Strategy,
    comparison_notes,
    comparison_rows,
    default_strategies,
    family_strategies,
    list_strategies,
)
from ..errors import is_out_of_memory, out_of_memory
from ..recording.runner import StepSetup, make_optimizer, run_step, time_steps
from ..rendering.compare import StrategyComparison
from ..rendering.step import StepProfile
from ..validation import UsageError, check_choice, check_positive_int, parse_mode, parse_names
from ..vocabulary import COMPARE_FIXED_OPTIONS, Mode, dtype_name
from .step import StepArgs, check_step_args, run_profile_step

__all__ = ["CompareArgs", "build_strategy", "check_compare_args", "compare_strategies", "run_comparison",
           "time_strategies"]

#: One sample of every strategy's input (CIFAR-10).
INPUT_SHAPE = (3, 32, 32)


def build_strategy(strategy: str, num_classes: int = 10, seed: int = 0, family: str = "vgg",
                   model_options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the model a strategy trains (the reference's weights are the same for plain and wrappers).

    Args:
        strategy: a name from :func:`~memprof.aggregation.compare.list_strategies` of ``family``.
        num_classes: classifier outputs.
        seed: seeds the weight initialisation.
        family: ``vgg`` (VGG-19, Rev-VGG, i-Rev-VGG) or ``vit`` (ViT, Rev-ViT).
        model_options: options of the strategy's model builder (``depth``, ``width`` ... of the
            ViTs), checked by :func:`check_compare_args`.

    Returns:
        A freshly initialised model in training mode.

    Raises:
        UsageError: for an unknown strategy or family, listing the known ones.
    """
    from ..models import get_model
    from ..models.strategies import SaveOnCpu, checkpoint_sqrt, checkpoint_stages

    table = family_strategies(family)
    info = table[check_choice("strategy", strategy, table)]
    torch.manual_seed(seed)
    model = get_model(info.model, num_classes=num_classes, **(model_options or {}))
    if info.strategy is Strategy.CHECKPOINT_STAGES:
        return checkpoint_stages(model)
    if info.strategy is Strategy.CHECKPOINT_SQRT:
        return checkpoint_sqrt(model)
    if info.strategy is Strategy.OFFLOAD:
        return SaveOnCpu(model)
    return model


@dataclass(frozen=True)
class CompareArgs:
    """Checked arguments of :func:`compare_strategies`."""

    strategies: list[str]
    batch_size: int
    mode: Mode
    device: torch.device
    dtype: torch.dtype
    optimizer: str
    repeats: int
    timing: bool
    family: str = "vgg"
    model_options: dict[str, Any] = field(default_factory=dict)


def check_compare_args(
    strategies: str | Sequence[str] | None = None,
    batch_size: Any = 32,
    mode: str = Mode.ESTIMATED,
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: str = "sgd",
    repeats: Any = 5,
    timing: bool = True,
    family: str = "vgg",
    model_options: Mapping[str, Any] | None = None,
) -> CompareArgs:
    """Every check of :func:`compare_strategies`, in one place, before any work starts.

    ``plain`` is the reference of every ratio: it is put first when not listed. Every strategy's
    model must take every one of ``model_options``.

    Raises:
        UsageError: naming the bad value and the allowed ones.
    """
    table = family_strategies(family)
    mode = parse_mode(mode)
    if str(device).startswith("cuda") and not torch.cuda.is_available() and (timing or mode is Mode.MEASURED):
        raise UsageError(f"device {device!r} is not available here: step times and measured memory need it; "
                         "use --device cpu, or --estimate --no-time")
    step = check_step_args(batch_size, INPUT_SHAPE, optimizer, dtype, device, mode is Mode.ESTIMATED and not timing)
    repeats = check_positive_int("repeats", repeats)
    if strategies is None:
        names = default_strategies(mode, step.device, family)
    else:
        names = parse_names(strategies, "strategy", list_strategies(family))
    for name in names:
        if table[name].needs_cuda and (step.device.type != "cuda" or mode is not Mode.MEASURED):
            allowed = ", ".join(default_strategies(mode, step.device, family))
            raise UsageError(
                f"strategy {name!r} needs --measure on a CUDA device (save_on_cpu moves saved tensors "
                f"from the GPU to the host; an estimate would count the host copies); allowed here: {allowed}")
    if Strategy.PLAIN.value not in names:
        names.insert(0, Strategy.PLAIN.value)
    options = dict(model_options or {})
    if options:
        from ..models.registry import check_model_options

        for option in options:
            if option in COMPARE_FIXED_OPTIONS:
                raise UsageError(f"model option {option!r} is not for compare: each strategy decides how its "
                                 f"model runs, on {','.join(map(str, INPUT_SHAPE))} inputs; allowed: those of "
                                 f"{family_strategies(family)['plain'].model} but {', '.join(COMPARE_FIXED_OPTIONS)}")
        for model in dict.fromkeys(table[name].model for name in names):
            check_model_options(model, options)
    return CompareArgs(names, step.batch_size, mode, step.device, step.dtype, step.optimizer, repeats, bool(timing),
                       family, options)


def time_strategies(
    models: dict[str, nn.Module],
    batch_size: int,
    input_shape: Sequence[int],
    *,
    device: torch.device,
    dtype: torch.dtype,
    optimizer: str,
    repeats: int,
    on_round: Callable[[], Any] | None = None,
    failures: dict[str, str] | None = None,
) -> dict[str, list[float]]:
    """Time one training step of each model, round by round (NOTE [ Step times side by side ]).

    Args:
        models: strategy name -> model (moved to ``device``/``dtype`` here, in place).
        batch_size, input_shape: the batch.
        device, dtype, optimizer: as for :func:`memprof.api.step.profile_step`.
        repeats: rounds.
        on_round: called after each round (a progress bar's update).
        failures: if given, a model whose warm-up step runs out of memory is left out of the
            timing and its status recorded here (otherwise the error propagates).

    Returns:
        Strategy name -> step times in seconds (wall time), one per round.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *input_shape), generator=g).to(device=device, dtype=dtype)
    y = torch.randint(10, (batch_size,), generator=g).to(device)
    setups = {}
    for name, model in models.items():
        model.to(device=device, dtype=dtype).train()
        opt = make_optimizer(optimizer, model.parameters())
        opt.zero_grad(set_to_none=True)
        try:
            run_step(model, opt, x, y)  # warm-up: optimizer state, kernels, allocator caches
        except (RuntimeError, MemoryError) as exc:  # NOTE [ Out of memory is a result ]: not timed
            if failures is None or not is_out_of_memory(exc):
                raise
            failures[name] = out_of_memory(exc, batch_size, device).status + " (its step could not be timed)"
            del opt
            gc.collect()
            continue
        setups[name] = StepSetup(model, opt, x, y)
    times = time_steps(setups, repeats, clock=time.perf_counter, on_round=on_round)
    return {name: t.rounds for name, t in times.items()}


def run_comparison(args: CompareArgs, *, progress: bool | None = False) -> StrategyComparison:
    """The comparison for checked arguments (:func:`check_compare_args`); nothing is checked again."""
    from tqdm import tqdm

    total = len(args.strategies) + (args.repeats if args.timing else 0)
    bar = tqdm(total=total, desc="memprof compare", unit="task",
               disable=(None if progress is None else not progress), leave=False)
    models: dict[str, nn.Module] = {}
    profiles: dict[str, StepProfile] = {}
    step = StepArgs(args.batch_size, INPUT_SHAPE, args.optimizer, args.dtype, args.device, args.mode is Mode.ESTIMATED)
    failures: dict[str, str] = {}
    try:
        for name in args.strategies:
            bar.set_postfix_str(f"{name} memory")
            models[name] = build_strategy(name, family=args.family, model_options=args.model_options)
            try:
                profiles[name] = run_profile_step(models[name], step, name=name)
            except (RuntimeError, MemoryError) as exc:  # NOTE [ Out of memory is a result ]: a row, not a crash
                if not is_out_of_memory(exc):
                    raise
                failures[name] = out_of_memory(exc, args.batch_size, args.device).status
                gc.collect()
            bar.update(1)
        times: dict[str, list[float]] = {}
        if args.timing:
            bar.set_postfix_str("step times")
            timed = {n: m for n, m in models.items() if n not in failures}  # what did not fit is not timed
            times = time_strategies(timed, args.batch_size, INPUT_SHAPE, device=args.device, dtype=args.dtype,
                                    optimizer=args.optimizer, repeats=args.repeats, on_round=lambda: bar.update(1),
                                    failures=failures)
    finally:
        bar.close()
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    rows = comparison_rows(args.strategies, profiles, params, times, failures, args.family)
    notes = comparison_notes(args.strategies, args.family)
    if args.model_options:
        from ..models.registry import format_options

        notes.append(f"Every model built with {format_options(args.model_options)}; the descriptions give "
                     "the defaults.")
    return StrategyComparison.from_data(ComparisonData(
        rows, args.batch_size, args.mode, str(args.device), dtype_name(args.dtype), args.optimizer, args.repeats,
        notes, profiles, args.family))


def compare_strategies(
    strategies: str | Sequence[str] | None = None,
    batch_size: int = 32,
    *,
    mode: str = Mode.ESTIMATED,
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: str = "sgd",
    repeats: int = 5,
    timing: bool = True,
    progress: bool | None = False,
    family: str = "vgg",
    model_options: Mapping[str, Any] | None = None,
) -> StrategyComparison:
    """Profile and time a model family's memory-saving strategies side by side, in one run.

    Args:
        strategies: names from :func:`~memprof.aggregation.compare.list_strategies`
            (``"plain,reversible"`` or a list); default: every strategy this mode and device can
            run (:func:`~memprof.aggregation.compare.default_strategies`). ``plain``, the
            reference of the ratios, is added first when missing.
        batch_size: samples per step.
        mode: ``estimated`` (memory under FakeTensorMode, default) or ``measured`` (allocator
            peaks of a real step). Step times are always measured.
        device: ``cpu`` or ``cuda``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        optimizer: ``sgd`` (momentum 0.9) or ``adam``.
        repeats: timing rounds (NOTE [ Step times side by side ]).
        timing: measure step times (False: memory only, deterministic in estimated mode).
        progress: show a tqdm progress bar (None: only on a terminal).
        family: ``vgg`` (VGG-19 plain and checkpointed, Rev-VGG, i-Rev-VGG) or ``vit`` (ViT
            plain, checkpointed per block and every sqrt(n) units, Rev-ViT).
        model_options: options of every strategy's model builder, e.g. ``{"depth": 6}`` for
            the ViTs (not ``reversible``, ``image_size`` or ``in_channels``).

    Returns:
        The :class:`~memprof.rendering.compare.StrategyComparison`.

    Raises:
        UsageError: for any bad argument, before any work starts.
    """
    args = check_compare_args(strategies, batch_size, mode, device, dtype, optimizer, repeats, timing, family,
                              model_options)
    return run_comparison(args, progress=progress)
