"""Sweeps over models and batch sizes: :func:`sweep` and its :class:`SweepResult`.

For each model and batch size a sweep records four figures side by side:

- ``seed_activation_bytes``: the deck's convention (output elements of conv, batch-norm,
  pooling and linear layers per sample, times the batch and the element size), from
  :func:`memprof.aggregation.table.layer_table`;
- ``saved_bytes``: the bytes autograd really saves in a forward (the same table, measured on the
  meta device: exact storage sizes, no arithmetic);
- ``peak_bytes`` and ``activation_peak_bytes``: a steady-state training step's peak and its
  activation peak (NOTE [ The activation peak, defined once ]), from
  :func:`memprof.aggregation.step.profile_step`, estimated (FakeTensorMode, the default) or
  measured;

and the saving of each figure against the first model at the same batch size, in percent.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..validation import check_output_dir, parse_batch_sizes, parse_mode, parse_names
from ..vocabulary import Mode, dtype_name
from ..rendering.tables import RenderedResult
from ..units import format_bytes

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_MODELS",
    "SweepResult",
    "check_sweep_args",
    "is_out_of_memory",
    "sweep",
    "write_sweep_reports",
]

#: The models swept by default; the first is the reference of the savings.
DEFAULT_MODELS: tuple[str, ...] = ("vgg19", "revvgg", "irevvgg")
#: The default batch sizes: a factor of 8 apart, 1 to 512 (12 estimates, under a minute on 2 cores).
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 8, 64, 512)
#: The figures of a row, each also given as a saving against the first model.
FIGURES: tuple[str, ...] = ("seed_activation_bytes", "saved_bytes", "activation_peak_bytes", "peak_bytes")

#: Status of a row.
STATUS_OK = "ok"
STATUS_OOM = "out of memory"
STATUS_SKIPPED = "skipped: a smaller batch ran out of memory"

@dataclass(frozen=True)
class SweepArgs:
    """Checked arguments of :func:`sweep`."""

    models: list[str]
    batch_sizes: list[int]
    mode: Mode
    device: torch.device
    dtype: torch.dtype
    optimizer: str


def check_sweep_args(
    models: str | Sequence[str] = DEFAULT_MODELS,
    batch_sizes: str | Sequence[int] = DEFAULT_BATCH_SIZES,
    mode: str = Mode.ESTIMATED,
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: str = "sgd",
) -> SweepArgs:
    """Every check of :func:`sweep`, in one place, before any work starts.

    Raises:
        UsageError: naming the bad value and the allowed ones.
    """
    from ..models import list_models
    from .step import check_step_args

    names = parse_names(models, "model", list_models())
    sizes = parse_batch_sizes(batch_sizes)
    checked_mode = parse_mode(mode)
    _, _, opt, dt, dev = check_step_args(1, (3, 32, 32), optimizer, dtype, device, checked_mode is Mode.ESTIMATED)
    return SweepArgs(names, sizes, checked_mode, dev, dt, opt)


# -- running ---------------------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's out-of-memory error (CUDA or the CPU allocator)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class SweepResult(RenderedResult):
    """Rows of a sweep: one per (model, batch size), in the order run.

    Attributes:
        rows: dicts with ``model``, ``batch_size``, ``status``, the :data:`FIGURES` (bytes,
            None where the step did not run) and ``<figure>_saving_pct`` against the first model.
        models, batch_sizes: what was swept; the first model is the savings' reference.
        mode: ``estimated`` or ``measured``; device, dtype, optimizer: of the training steps.
    """

    rows: list[dict[str, Any]]
    models: list[str]
    batch_sizes: list[int]
    mode: Mode
    device: str
    dtype: str
    optimizer: str
    notes: list[str] = field(default_factory=list)

    @property
    def reference(self) -> str:
        """The model the savings are computed against (the first)."""
        return self.models[0]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (model, batch size); bytes as integers (missing: NA), savings in percent."""
        import pandas as pd

        cols = ["model", "batch_size", "status", *FIGURES, *(f"{f}_saving_pct" for f in FIGURES)]
        df = pd.DataFrame(self.rows, columns=cols)
        for f in FIGURES:
            df[f] = df[f].astype("Int64")
        for f in FIGURES:
            df[f"{f}_saving_pct"] = df[f"{f}_saving_pct"].astype("float64").round(2)
        return df

    def to_csv(self, comment: str | None = None) -> str:
        """CSV of :meth:`to_dataframe` (raw bytes; an optional ``# comment`` first line)."""
        from ..rendering.tables import render_csv

        return render_csv(self.to_dataframe(), comment=comment)

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure: settings, rows, notes."""
        return {
            "models": list(self.models), "batch_sizes": list(self.batch_sizes), "mode": self.mode,
            "device": self.device, "dtype": self.dtype, "optimizer": self.optimizer,
            "reference": self.reference,
            "rows": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in self.rows],
            "notes": self.notes_text(),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        from ..rendering.tables import render_json

        return render_json(self.to_dict())

    @property
    def kind(self) -> str:
        """``estimated`` or ``measured``: the label of the step figures."""
        return str(self.mode)

    @property
    def title(self) -> str:
        """One line naming the sweep's settings."""
        return (f"memprof sweep: {', '.join(self.models)} at batch {', '.join(map(str, self.batch_sizes))} "
                f"({self.kind} steps, {self.device}, {self.dtype}, {self.optimizer})")

    def notes_text(self) -> list[str]:
        """The lines under the table: what each column is, and the reference of the savings."""
        return [
            f"seed conv.: the deck's convention (output elements of conv, BN, pool and linear layers per "
            f"sample x batch x element size); autograd-saved: bytes autograd saves in one forward "
            f"(meta-device pass, exact sizes); step peak and activation peak: one steady-state training "
            f"step, {self.kind}" + (" (tensor-owned bytes, FakeTensorMode)" if self.mode == Mode.ESTIMATED else "")
            + "; activation peak = live bytes other than parameters, gradients and optimizer state.",
            f"saving: 1 - figure / {self.reference}'s figure at the same batch size.",
            "MiB = 2^20 bytes (the deck's 'MB' are MiB).",
            *self.notes,
        ]

    def _display(self) -> pd.DataFrame:
        df = self.to_dataframe()
        keep = ["model", "batch_size", "seed_activation_bytes", "saved_bytes", "activation_peak_bytes",
                "peak_bytes", "activation_peak_bytes_saving_pct", "seed_activation_bytes_saving_pct"]
        if (df["status"] != STATUS_OK).any():
            keep.insert(2, "status")
        return df[keep]

    def _render(self, fmt: str) -> str:
        from ..rendering.tables import render_table

        import pandas as pd

        def mib(v: Any) -> str:
            return "" if pd.isna(v) else format_bytes(int(v), "MiB")

        def pct(v: Any) -> str:
            return "" if pd.isna(v) else f"{v:.1f}%"

        headers = {
            "batch_size": "batch", "seed_activation_bytes": "seed conv.", "saved_bytes": "autograd-saved",
            "activation_peak_bytes": f"activation peak ({self.kind})", "peak_bytes": f"step peak ({self.kind})",
            "activation_peak_bytes_saving_pct": "saving (act. peak)",
            "seed_activation_bytes_saving_pct": "saving (seed conv.)",
        }
        formatters: dict[str, Callable[[Any], str]] = {f: mib for f in FIGURES}
        formatters.update({"activation_peak_bytes_saving_pct": pct, "seed_activation_bytes_saving_pct": pct})
        return render_table(self._display(), fmt, title=self.title, notes=self.notes_text(),
                            headers=headers, formatters=formatters)

    def plot(self, path: str | Path | None = None) -> Any:
        """Memory against batch size per model, and the savings in percent (see rendering.plots).

        Args:
            path: write a PNG there if given.

        Returns:
            The matplotlib Figure.
        """
        from ..rendering.plots import plot_sweep

        return plot_sweep(self.to_dataframe(), path, reference=self.reference, kind=self.kind,
                          title=self.title)


def _saving(value: int | None, ref: int | None) -> float | None:
    if value is None or ref is None or ref == 0:
        return None
    return 100.0 * (1.0 - value / ref)


def _measure_row(name: str, model: torch.nn.Module, b: int, args: SweepArgs) -> dict[str, Any]:
    from ..models import get_model_info
    from .step import profile_step
    from .table import layer_table

    table = layer_table(name, batch_size=b, dtype=dtype_name(args.dtype))
    prof = profile_step(model, b, tuple(get_model_info(name).input_shape), optimizer=args.optimizer,
                        dtype=args.dtype, device=args.device, estimate=args.mode is Mode.ESTIMATED, name=name)
    return {
        "seed_activation_bytes": table.totals.activation_bytes,
        "saved_bytes": table.totals.saved_bytes,
        "activation_peak_bytes": prof.activation_peak_bytes,
        "peak_bytes": prof.peak_bytes,
    }


def sweep(
    models: str | Sequence[str] = DEFAULT_MODELS,
    batch_sizes: str | Sequence[int] = DEFAULT_BATCH_SIZES,
    *,
    mode: str = Mode.ESTIMATED,
    device: str = "cpu",
    dtype: str = "float32",
    optimizer: str = "sgd",
    progress: bool | None = True,
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

    Returns:
        The :class:`SweepResult`.

    Raises:
        UsageError: for any bad argument, before any work starts.
    """
    from tqdm import tqdm

    from ..models import get_model

    args = check_sweep_args(models, batch_sizes, mode, device, dtype, optimizer)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(args.models) * len(args.batch_sizes), desc="memprof sweep", unit="step",
               disable=(None if progress is None else not progress), leave=False)
    try:
        for name in args.models:
            torch.manual_seed(0)
            model = get_model(name)
            failed = False
            for b in args.batch_sizes:
                bar.set_postfix_str(f"{name} batch {b}")
                row: dict[str, Any] = {"model": name, "batch_size": b, "status": STATUS_OK}
                row.update({f: None for f in FIGURES})
                if failed:
                    row["status"] = STATUS_SKIPPED
                else:
                    try:
                        row.update(_measure_row(name, model, b, args))
                    except Exception as exc:  # noqa: BLE001 - only out-of-memory is caught
                        if args.mode is not Mode.MEASURED or not is_out_of_memory(exc):
                            raise
                        row["status"], failed = STATUS_OOM, True
                        _free_memory(args.device)
                rows.append(row)
                bar.update(1)
            del model
            _free_memory(args.device)
    finally:
        bar.close()
    ref = {r["batch_size"]: r for r in rows if r["model"] == args.models[0]}
    for r in rows:
        for f in FIGURES:
            r[f"{f}_saving_pct"] = None if r["model"] == args.models[0] else _saving(r[f], ref[r["batch_size"]][f])
    notes = []
    if args.mode is Mode.MEASURED and args.device.type == "cpu":
        notes.append("Measured on the CPU: peaks are the c10 CPU allocator's (torch.profiler memory events).")
    return SweepResult(rows, args.models, args.batch_sizes, args.mode, str(args.device),
                       dtype_name(args.dtype), args.optimizer, notes)


# -- reports ---------------------------------------------------------------------------------------

#: The command whose output the sweep reports are (the defaults).
REPORT_COMMAND = "memprof report sweep"  # same figures as `memprof sweep --out reports`


def render_sweep_png(result: SweepResult) -> bytes:
    """The sweep plot as PNG bytes (rendered in memory, so a file is written whole or not at all)."""
    import io

    buf = io.BytesIO()
    fig = result.plot()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_sweep_files(result: SweepResult, out_dir: str | Path, command: str) -> list[Path]:
    """Write ``sweep.csv`` and ``sweep.png`` under ``out_dir``, each atomically.

    Returns:
        The paths written.
    """
    from ..reporting import atomic_write_bytes, atomic_write_text, provenance

    out = Path(out_dir)
    png = render_sweep_png(result)
    csv = result.to_csv(comment=provenance(command) + " " + result.title + "; bytes; savings in percent.")
    return [atomic_write_text(out / "sweep.csv", csv), atomic_write_bytes(out / "sweep.png", png)]


def write_sweep_reports(out_dir: Path) -> list[Path]:
    """``reports/sweep.csv`` and ``reports/sweep.png``: the default sweep (estimated, CPU, float32).

    Returns:
        The paths written.
    """
    result = sweep(progress=False)
    return write_sweep_files(result, out_dir, REPORT_COMMAND)


__all__ += ["REPORT_COMMAND", "render_sweep_png", "write_sweep_files"]
