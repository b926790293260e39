"""Memory-saving strategies for VGG-19, side by side: :func:`compare_strategies`.

The strategies a user could pick to train VGG-19 (the deck's network) in less memory:

==================  ==========================================================================
plain               VGG-19 under ordinary autograd: the reference of every ratio.
checkpoint-stages   VGG-19, each stage (up to its max-pool) under torch.utils.checkpoint.
checkpoint-sqrt     VGG-19 cut into ceil(sqrt(n)) segments of sqrt(n) units, each checkpointed.
reversible          the deck's Rev-VGG (``revvgg``): reversible couplings inside each stage.
invertible          i-Rev-VGG (``irevvgg``): invertible from the input to the head.
offload             VGG-19 under torch.autograd.graph.save_on_cpu (GPU only, measured only).
==================  ==========================================================================

Each is profiled with :func:`memprof.aggregation.step.profile_step` (activation peak and step
peak, estimated or measured) and timed for real, all strategies in one run, their steps
interleaved round by round so that a change in the machine's load hits them alike; the step
time is reported as a ratio to plain's. Checkpointing keeps VGG-19's weights and parameter
count, the reversible models change the architecture: the table shows every axis, and its notes
say where checkpointing beats the reversible models and where it does not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import UsageError, check_choice, check_positive_int
from ..rendering.tables import RenderedResult
from ..units import format_bytes

if TYPE_CHECKING:
    import pandas as pd

    from .step import StepProfile

__all__ = [
    "STRATEGIES",
    "Strategy",
    "StrategyComparison",
    "StrategyInfo",
    "build_strategy",
    "check_compare_args",
    "compare_strategies",
    "default_strategies",
    "list_strategies",
    "time_strategies",
    "write_compare_reports",
]


class Strategy(str, Enum):
    """The strategies :func:`compare_strategies` knows (string values, so a typo fails loudly)."""

    PLAIN = "plain"
    CHECKPOINT_STAGES = "checkpoint-stages"
    CHECKPOINT_SQRT = "checkpoint-sqrt"
    REVERSIBLE = "reversible"
    INVERTIBLE = "invertible"
    OFFLOAD = "offload"


@dataclass(frozen=True)
class StrategyInfo:
    """What a strategy is: its model, how it saves memory, and what it needs."""

    strategy: Strategy
    model: str
    description: str
    family: str  # "reference", "checkpointing", "reversible" or "offloading"
    needs_cuda: bool = False


STRATEGIES: dict[str, StrategyInfo] = {
    s.strategy.value: s
    for s in (
        StrategyInfo(Strategy.PLAIN, "vgg19", "VGG-19, ordinary autograd", "reference"),
        StrategyInfo(Strategy.CHECKPOINT_STAGES, "vgg19",
                     "VGG-19, torch.utils.checkpoint per stage (5 segments + head)", "checkpointing"),
        StrategyInfo(Strategy.CHECKPOINT_SQRT, "vgg19",
                     "VGG-19, torch.utils.checkpoint every sqrt(n) layers (5 segments of 5 units)",
                     "checkpointing"),
        StrategyInfo(Strategy.REVERSIBLE, "revvgg", "Rev-VGG, reversible couplings in each stage", "reversible"),
        StrategyInfo(Strategy.INVERTIBLE, "irevvgg", "i-Rev-VGG, invertible from input to head", "reversible"),
        StrategyInfo(Strategy.OFFLOAD, "vgg19",
                     "VGG-19, saved tensors offloaded to pinned host memory (save_on_cpu)", "offloading",
                     needs_cuda=True),
    )
}

#: The same strategies for the transformers: ``vit`` and its reversible twin ``revvit``.
VIT_STRATEGIES: dict[str, StrategyInfo] = {
    s.strategy.value: s
    for s in (
        StrategyInfo(Strategy.PLAIN, "vit", "ViT (192 wide, 12 blocks), ordinary autograd", "reference"),
        StrategyInfo(Strategy.CHECKPOINT_STAGES, "vit",
                     "ViT, torch.utils.checkpoint per transformer block (12 segments + head)", "checkpointing"),
        StrategyInfo(Strategy.CHECKPOINT_SQRT, "vit",
                     "ViT, torch.utils.checkpoint every sqrt(n) units (4 segments of 3-4 units)", "checkpointing"),
        StrategyInfo(Strategy.REVERSIBLE, "revvit", "Rev-ViT, the blocks as reversible couplings on two streams",
                     "reversible"),
        StrategyInfo(Strategy.OFFLOAD, "vit",
                     "ViT, saved tensors offloaded to pinned host memory (save_on_cpu)", "offloading",
                     needs_cuda=True),
    )
}

#: Model family -> its strategies (``memprof compare --family``); the first is the default.
FAMILIES: dict[str, dict[str, StrategyInfo]] = {"vgg": STRATEGIES, "vit": VIT_STRATEGIES}
#: What each family's title calls its reference model.
FAMILY_TITLES: dict[str, str] = {"vgg": "VGG-19", "vit": "ViT"}

MODES: tuple[str, ...] = ("estimate", "measure")


def family_strategies(family: str = "vgg") -> dict[str, StrategyInfo]:
    """The strategies of a model family.

    Raises:
        UsageError: for an unknown family, listing the known ones.
    """
    return FAMILIES[check_choice("family", family, FAMILIES)]


def list_strategies(family: str = "vgg") -> list[str]:
    """The strategy names of ``family``, in display order."""
    return list(family_strategies(family))


def default_strategies(mode: str = "estimate", device: str | torch.device = "cpu", family: str = "vgg") -> list[str]:
    """Every strategy that can run with this mode and device (offload: measured on CUDA only)."""
    dev = torch.device(device)
    return [s for s, info in family_strategies(family).items()
            if not info.needs_cuda or (dev.type == "cuda" and mode == "measure")]


def build_strategy(strategy: str, num_classes: int = 10, seed: int = 0, family: str = "vgg") -> nn.Module:
    """Build the model a strategy trains (VGG-19's weights are the same for plain and wrappers).

    Args:
        strategy: a name from :func:`list_strategies` of ``family``.
        num_classes: classifier outputs.
        seed: seeds the weight initialisation.
        family: ``vgg`` (VGG-19, Rev-VGG, i-Rev-VGG) or ``vit`` (ViT, Rev-ViT).

    Returns:
        A freshly initialised model in training mode.

    Raises:
        UsageError: for an unknown strategy, listing the known ones.
    """
    from ..models import get_model
    from ..models.strategies import SaveOnCpu, checkpoint_sqrt, checkpoint_stages

    table = family_strategies(family)
    info = table[check_choice("strategy", strategy, table)]
    torch.manual_seed(seed)
    model = get_model(info.model, num_classes=num_classes)
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
    mode: str
    device: torch.device
    dtype: torch.dtype
    optimizer: str
    repeats: int
    timing: bool
    family: str = "vgg"


def check_compare_args(
    strategies: str | Sequence[str] | None = None,
    batch_size: Any = 32,
    mode: str = "estimate",
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: str = "sgd",
    repeats: Any = 5,
    timing: bool = True,
    family: str = "vgg",
) -> CompareArgs:
    """Every check of :func:`compare_strategies`, in one place, before any work starts.

    ``plain`` is the reference of every ratio: it is put first when not listed.

    Raises:
        UsageError: naming the bad value and the allowed ones.
    """
    from .step import check_step_args
    from .sweep import parse_names

    table = family_strategies(family)
    check_choice("mode", mode, MODES)
    if str(device).startswith("cuda") and not torch.cuda.is_available() and (timing or mode == "measure"):
        raise UsageError(f"device {device!r} is not available here: step times and measured memory need it; "
                         "use --device cpu, or --estimate --no-time")
    batch_size, _, optimizer, dt, dev = check_step_args(
        batch_size, (3, 32, 32), optimizer, dtype, device, mode == "estimate" and not timing)
    repeats = check_positive_int("repeats", repeats)
    if strategies is None:
        names = default_strategies(mode, dev, family)
    else:
        names = parse_names(strategies, "strategy", list_strategies(family))
    for name in names:
        if table[name].needs_cuda and (dev.type != "cuda" or mode != "measure"):
            allowed = ", ".join(default_strategies(mode, dev, family))
            raise UsageError(
                f"strategy {name!r} needs --measure on a CUDA device (save_on_cpu moves saved tensors "
                f"from the GPU to the host; an estimate would count the host copies); allowed here: {allowed}")
    if Strategy.PLAIN.value not in names:
        names.insert(0, Strategy.PLAIN.value)
    return CompareArgs(names, batch_size, mode, dev, dt, optimizer, repeats, bool(timing), family)


# -- timing ----------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# NOTE [ Step times side by side ]
# Step times on a shared machine drift with its load. Every strategy is therefore set up first
# (model, optimizer with its state, one warm-up step), then timed in rounds: each round runs
# one step of every strategy in turn, so that a change of load hits all strategies alike. Other
# work on the machine can only add time to a step, never remove it, so a strategy's undisturbed
# time is best estimated by its fastest round (as timeit advises); the headline ratio is the
# strategy's fastest step over plain's fastest step. Beside it, the range of the ratios taken
# within each round (its step over plain's step of the same round) shows how noisy the run
# was: a wide range says rerun with more rounds. Only ratios are reported: absolute times say
# more about the machine than about the strategy.
def time_strategies(
    models: dict[str, nn.Module],
    batch_size: int,
    input_shape: Sequence[int],
    *,
    device: torch.device,
    dtype: torch.dtype,
    optimizer: str,
    repeats: int,
    on_round: Any = None,
) -> dict[str, list[float]]:
    """Time one training step of each model, round by round (NOTE [ Step times side by side ]).

    Args:
        models: strategy name -> model (moved to ``device``/``dtype`` here, in place).
        batch_size, input_shape: the batch.
        device, dtype, optimizer: as for :func:`memprof.aggregation.step.profile_step`.
        repeats: rounds.
        on_round: called after each round (a progress bar's update).

    Returns:
        Strategy name -> step times in seconds, one per round.
    """
    from .step import make_optimizer, run_step

    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *input_shape), generator=g).to(device=device, dtype=dtype)
    y = torch.randint(10, (batch_size,), generator=g).to(device)
    setups = {}
    for name, model in models.items():
        model.to(device=device, dtype=dtype).train()
        opt = make_optimizer(optimizer, model.parameters())
        opt.zero_grad(set_to_none=True)
        run_step(model, opt, x, y)  # warm-up: optimizer state, kernels, allocator caches
        setups[name] = (model, opt)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, (model, opt) in setups.items():
            opt.zero_grad(set_to_none=True)
            _sync(device)
            t0 = time.perf_counter()
            run_step(model, opt, x, y)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
        if on_round is not None:
            on_round()
    for _, opt in setups.values():
        opt.zero_grad(set_to_none=True)
    return times


# -- the result ------------------------------------------------------------------------------------


@dataclass
class StrategyComparison(RenderedResult):
    """One row per strategy: memory (estimated or measured), step time ratio, parameters.

    Attributes:
        rows: dicts with ``strategy``, ``model``, ``description``, ``params``,
            ``activation_peak_bytes``, ``peak_bytes``, their ratios to plain
            (``activation_ratio``, ``peak_ratio``), ``step_time_s`` (fastest round, measured;
            None without timing), ``time_ratio`` (fastest over plain's fastest) and
            ``time_ratio_min``/``time_ratio_max`` (range of the within-round ratios).
        batch_size, mode, device, dtype, optimizer, repeats: the settings.
        profiles: strategy -> its :class:`memprof.aggregation.step.StepProfile`.
    """

    rows: list[dict[str, Any]]
    batch_size: int
    mode: str
    device: str
    dtype: str
    optimizer: str
    repeats: int
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, StepProfile] = field(default_factory=dict, repr=False)
    family: str = "vgg"

    @property
    def strategies(self) -> dict[str, StrategyInfo]:
        """The family's strategy table."""
        return family_strategies(self.family)

    @property
    def kind(self) -> str:
        """``estimated`` or ``measured``: the label of the memory figures."""
        return "estimated" if self.mode == "estimate" else "measured"

    @property
    def title(self) -> str:
        """One line naming the settings."""
        return (f"memprof compare: {FAMILY_TITLES[self.family]} memory-saving strategies at batch {self.batch_size} "
                f"({self.kind} memory, {self.device}, {self.dtype}, {self.optimizer})")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per strategy; bytes and parameters as integers, ratios as floats."""
        import pandas as pd

        cols = ["strategy", "model", "params", "activation_peak_bytes", "peak_bytes", "activation_ratio",
                "peak_ratio", "time_ratio", "time_ratio_min", "time_ratio_max", "step_time_s", "description"]
        df = pd.DataFrame(self.rows, columns=cols)
        for c in ("time_ratio", "time_ratio_min", "time_ratio_max", "step_time_s"):
            df[c] = df[c].astype("float64")
        return df

    def to_csv(self, comment: str | None = None) -> str:
        """CSV of :meth:`to_dataframe`."""
        from ..rendering.tables import render_csv

        return render_csv(self.to_dataframe(), comment=comment)

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure: settings, rows, notes."""
        return {"family": self.family, "batch_size": self.batch_size, "mode": self.mode, "device": self.device, "dtype": self.dtype,
                "optimizer": self.optimizer, "repeats": self.repeats, "rows": self.rows,
                "notes": self.notes_text()}

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        from ..rendering.tables import render_json

        return render_json(self.to_dict())

    def findings(self) -> list[str]:
        """Where each checkpointing strategy beats each reversible one, and the reverse, axis by axis.

        NOTE [ An honest comparison ]: the reversible models change the architecture (and the
        parameter count); checkpointing keeps VGG-19 and pays in recomputation. Neither wins on
        every axis, and these lines say which wins where, from this run's numbers.
        """
        by = {r["strategy"]: r for r in self.rows}
        axes = [("activation peak", "activation_peak_bytes", lambda v: format_bytes(v, "MiB")),
                ("step peak", "peak_bytes", lambda v: format_bytes(v, "MiB")),
                ("step time", "time_ratio", lambda v: f"{v:.2f}x plain"),
                ("parameters", "params", lambda v: f"{v:,}")]
        lines = []
        ckpts = [s for s in by if self.strategies[s].family == "checkpointing"]
        revs = [s for s in by if self.strategies[s].family == "reversible"]
        for c in ckpts:
            for r in revs:
                wins, losses = [], []
                for label, key, fmt in axes:
                    a, b = by[c][key], by[r][key]
                    if a is None or b is None:
                        continue
                    if a < b:
                        wins.append(f"{label} ({fmt(a)} vs {fmt(b)})")
                    elif a > b:
                        losses.append(f"{label} ({fmt(b)} vs {fmt(a)})")
                if wins:
                    lines.append(f"{c} beats {r} on " + ", ".join(wins) + ".")
                if losses:
                    lines.append(f"{r} beats {c} on " + ", ".join(losses) + ".")
        for label, key, fmt in axes:
            vals = [(r[key], r["strategy"]) for r in self.rows if r[key] is not None]
            if vals:
                low = min(v for v, _ in vals)
                names = ", ".join(n for v, n in vals if v == low)
                lines.append(f"Lowest {label}: {names} ({fmt(low)}).")
        return lines

    def notes_text(self) -> list[str]:
        """The lines under the table: definitions, findings and caveats."""
        timed = any(r["time_ratio"] is not None for r in self.rows)
        notes = [
            f"activation peak: live bytes of one steady-state training step other than parameters, "
            f"gradients and optimizer state ({self.kind}"
            + (", tensor-owned bytes under FakeTensorMode" if self.mode == "estimate" else "") + "); "
            "step peak: all live bytes at the step's peak; ratios are to plain's figure.",
        ]
        if timed:
            notes.append(f"step time: measured on {self.device} in {self.repeats} rounds in which every strategy runs "
                         "one step in turn (NOTE [ Step times side by side ]): the fastest step over plain's fastest; "
                         "'range over rounds' spans the ratios to plain's step of the same round (a wide range: a "
                         "noisy machine, rerun with more --repeats). A step is forward, loss, backward and optimizer "
                         "step, after a warm-up step.")
        notes.append("MiB = 2^20 bytes.")
        return notes + self.findings() + self.notes

    def _display(self) -> pd.DataFrame:
        import pandas as pd

        df = self.to_dataframe()
        df = df[["strategy", "params", "activation_peak_bytes", "activation_ratio", "peak_bytes", "peak_ratio",
                 "time_ratio", "time_ratio_min", "time_ratio_max", "description"]].copy()
        df["time_range"] = [
            "" if pd.isna(lo) else f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(df["time_ratio_min"], df["time_ratio_max"])]
        return df[["strategy", "params", "activation_peak_bytes", "activation_ratio", "peak_bytes", "peak_ratio",
                   "time_ratio", "time_range", "description"]]

    def _render(self, fmt: str) -> str:
        import pandas as pd

        from ..rendering.tables import format_count, render_table

        def mib(v: Any) -> str:
            return "" if pd.isna(v) else format_bytes(int(v), "MiB")

        def ratio(v: Any) -> str:
            return "" if pd.isna(v) else f"{v:.2f}"

        headers = {"params": "parameters", "activation_peak_bytes": f"activation peak ({self.kind})",
                   "activation_ratio": "/ plain", "peak_bytes": f"step peak ({self.kind})", "peak_ratio": "/ plain ",
                   "time_ratio": "step time / plain (measured)", "time_range": "range over rounds"}
        return render_table(self._display(), fmt, title=self.title, notes=self.notes_text(), headers=headers,
                            formatters={"params": format_count, "activation_peak_bytes": mib, "peak_bytes": mib,
                                        "activation_ratio": ratio, "peak_ratio": ratio, "time_ratio": ratio})

    def plot(self, path: str | Path | None = None) -> Any:
        """Memory against step time, one point per strategy (see rendering.plots.plot_strategies).

        Args:
            path: write a PNG there if given.

        Returns:
            The matplotlib Figure.

        Raises:
            ValueError: if the comparison ran without timing.
        """
        from ..rendering.plots import plot_strategies

        return plot_strategies(self.to_dataframe(), path, title=self.title)


# -- the entry point ---------------------------------------------------------------------------------


# NOTE [ The activation peak of offloading ]
# save_on_cpu copies every saved tensor into host memory. The storage tracker sees every
# storage, host copies included, so its activation peak would count what offloading moved
# off the GPU. For the offload strategy (measured on CUDA only) the activation peak is
# therefore the GPU allocator's step peak minus the parameters, gradients and optimizer state
# live at that peak: the device bytes that are neither model nor optimizer state.
def _activation_peak(strategy: str, prof: StepProfile) -> int:
    if Strategy(strategy) is not Strategy.OFFLOAD:
        return prof.activation_peak_bytes
    state = sum(prof.at_peak.get(c, 0) for c in ("parameters", "gradients", "optimizer_state"))
    return prof.peak_bytes - state


def compare_strategies(
    strategies: str | Sequence[str] | None = None,
    batch_size: int = 32,
    *,
    mode: str = "estimate",
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: str = "sgd",
    repeats: int = 5,
    timing: bool = True,
    progress: bool | None = False,
    family: str = "vgg",
) -> StrategyComparison:
    """Profile and time a model family's memory-saving strategies side by side, in one run.

    Args:
        strategies: names from :func:`list_strategies` (``"plain,reversible"`` or a list);
            default: every strategy this mode and device can run (:func:`default_strategies`).
            ``plain``, the reference of the ratios, is added first when missing.
        batch_size: samples per step.
        mode: ``estimate`` (memory under FakeTensorMode, default) or ``measure`` (allocator
            peaks of a real step). Step times are always measured.
        device: ``cpu`` or ``cuda``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        optimizer: ``sgd`` (momentum 0.9) or ``adam``.
        repeats: timing rounds (NOTE [ Step times side by side ]).
        timing: measure step times (False: memory only, deterministic in estimate mode).
        progress: show a tqdm progress bar (None: only on a terminal).
        family: ``vgg`` (VGG-19 plain and checkpointed, Rev-VGG, i-Rev-VGG) or ``vit`` (ViT
            plain, checkpointed per block and every sqrt(n) units, Rev-ViT).

    Returns:
        The :class:`StrategyComparison`.

    Raises:
        UsageError: for any bad argument, before any work starts.
    """
    from tqdm import tqdm

    from .step import profile_step

    args = check_compare_args(strategies, batch_size, mode, device, dtype, optimizer, repeats, timing, family)
    table = family_strategies(family)
    shape = (3, 32, 32)
    total = len(args.strategies) + (args.repeats if args.timing else 0)
    bar = tqdm(total=total, desc="memprof compare", unit="task",
               disable=(None if progress is None else not progress), leave=False)
    models: dict[str, nn.Module] = {}
    profiles: dict[str, StepProfile] = {}
    try:
        for name in args.strategies:
            bar.set_postfix_str(f"{name} memory")
            models[name] = build_strategy(name, family=family)
            profiles[name] = profile_step(
                models[name], args.batch_size, shape, optimizer=args.optimizer, dtype=args.dtype,
                device=args.device, estimate=args.mode == "estimate", name=name)
            bar.update(1)
        times: dict[str, list[float]] = {}
        if args.timing:
            bar.set_postfix_str("step times")
            times = time_strategies(models, args.batch_size, shape, device=args.device, dtype=args.dtype,
                                    optimizer=args.optimizer, repeats=args.repeats, on_round=lambda: bar.update(1))
    finally:
        bar.close()
    ref = Strategy.PLAIN.value
    best = {n: min(t) for n, t in times.items()}  # NOTE [ Step times side by side ]
    ratios = {n: [a / b for a, b in zip(t, times[ref])] for n, t in times.items()}
    rows = []
    for name in args.strategies:
        prof = profiles[name]
        act = _activation_peak(name, prof)
        rows.append({
            "strategy": name,
            "model": table[name].model,
            "params": sum(p.numel() for p in models[name].parameters()),
            "activation_peak_bytes": act,
            "peak_bytes": prof.peak_bytes,
            "activation_ratio": None,
            "peak_ratio": None,
            "time_ratio": round(best[name] / best[ref], 4) if name in best else None,
            "time_ratio_min": round(min(ratios[name]), 4) if name in ratios else None,
            "time_ratio_max": round(max(ratios[name]), 4) if name in ratios else None,
            "step_time_s": best.get(name),
            "description": table[name].description,
        })
    plain = next(r for r in rows if r["strategy"] == ref)
    for r in rows:
        r["activation_ratio"] = round(r["activation_peak_bytes"] / plain["activation_peak_bytes"], 4)
        r["peak_ratio"] = round(r["peak_bytes"] / plain["peak_bytes"], 4)
    notes = []
    if any(table[s].strategy is Strategy.OFFLOAD for s in args.strategies):
        notes.append("offload: activation peak = GPU step peak minus parameters, gradients and optimizer state "
                     "(NOTE [ The activation peak of offloading ]); host memory is not counted.")
    if not any(table[s].needs_cuda for s in args.strategies):
        notes.append("offload (save_on_cpu) is not shown: it needs --measure on a CUDA device.")
    return StrategyComparison(rows, args.batch_size, args.mode, str(args.device),
                              str(args.dtype).replace("torch.", ""), args.optimizer, args.repeats, notes, profiles,
                              family)


# -- reports ---------------------------------------------------------------------------------------

#: The settings of reports/compare.md and compare.png.
REPORT_BATCH_SIZE = 32
REPORT_REPEATS = 5
REPORT_COMMAND = "memprof report compare"  # = memprof compare --batch-size 32 --repeats 5 --out reports


def write_compare_files(result: StrategyComparison, out_dir: str | Path, command: str) -> list[Path]:
    """Write ``compare.md`` (and ``compare.png`` when timed) under ``out_dir``, each atomically.

    Returns:
        The paths written.
    """
    import io

    from ..reporting import atomic_write_bytes, atomic_write_text, provenance

    out = Path(out_dir)
    png = None
    if any(r["time_ratio"] is not None for r in result.rows):
        buf = io.BytesIO()
        result.plot().savefig(buf, format="png", dpi=110)
        png = buf.getvalue()
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


__all__ += ["REPORT_COMMAND", "write_compare_files"]
