"""The per-layer table: rows from a recording, totals, and the comparison with the deck's tables.

:func:`layer_table` is the entry point (``memprof table`` calls it): it checks every argument,
records one forward (:mod:`memprof.recording.layers`), folds and hides rows for display, sums
the totals and, for the models the deck tabulates, compares with the deck's figures
(:mod:`memprof.seed`), naming the cause of every difference. The :class:`LayerTable` it returns
renders itself as text, Markdown, CSV and JSON and converts to a pandas DataFrame.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import UsageError, check_choice, check_positive_int
from ..rendering.tables import FORMATS, Format, format_count, render_csv, render_json, render_sections, render_table
from ..seed import SeedRow, SeedTable, get_seed_table, parse_shape
from ..units import DTYPES, MiB, dtype_size, format_bytes

if TYPE_CHECKING:
    import pandas as pd

    from ..recording.layers import LayerRecord, Recording

__all__ = [
    "LayerTable",
    "SeedComparison",
    "SeedDifference",
    "TableRow",
    "Totals",
    "build_layer_table",
    "check_table_args",
    "layer_table",
    "write_table_reports",
]

#: The reports written by :func:`write_table_reports` (one Markdown and one CSV per model).
REPORT_MODELS = ("vgg19", "revvgg", "irevvgg", "vit", "revvit")

Shape = tuple[int, ...]

# NOTE [ Folding and hiding rows ]
# The deck lists no ReLU rows. An in-place, parameter-free activation (ReLU(inplace=True))
# writes into the storage of the layer before it, yet autograd saves that storage for it (relu_
# saves its result), so its row is not empty: dropping it would break the sums. By default
# such a row is folded into the row before it (its layer becomes "BatchNorm2d+ReLU", its name
# "features.1+features.2", its bytes add up), which gives the deck's rows with correct sums.
# Rows with nothing to report at all (no parameters, no activations, nothing saved: a Flatten,
# a view) are hidden and named in the notes. all_rows=True shows every row unfolded.


@dataclass(frozen=True)
class TableRow:
    """One displayed row. ``activations`` is per sample (deck convention); bytes at the batch size."""

    name: str
    layer: str
    input_shape: tuple[Shape, ...]
    output_shape: tuple[Shape, ...]
    in_channels: int | None
    out_channels: int | None
    kernel: Shape | None
    stride: Shape | None
    params: int
    activations: int
    saved_bytes: int
    grad_bytes: int
    param_bytes: int
    reversible: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the row (shapes as lists; a list of lists when there are several)."""
        return {
            "name": self.name,
            "layer": self.layer,
            "input_shape": _shape_json(self.input_shape),
            "output_shape": _shape_json(self.output_shape),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel": list(self.kernel) if self.kernel else None,
            "stride": list(self.stride) if self.stride else None,
            "params": self.params,
            "activations": self.activations,
            "saved_bytes": self.saved_bytes,
            "grad_bytes": self.grad_bytes,
        }


@dataclass(frozen=True)
class Totals:
    """The table's totals: the deck's form (parameters, activations) and the measured bytes."""

    params: int
    param_bytes: int
    grad_bytes: int
    activations: int
    activation_bytes: int
    saved_bytes: int

    def to_dict(self) -> dict[str, int]:
        """The JSON form."""
        return {
            "params": self.params,
            "param_bytes": self.param_bytes,
            "activations": self.activations,
            "activation_bytes": self.activation_bytes,
            "saved_bytes": self.saved_bytes,
            "grad_bytes": self.grad_bytes,
        }


@dataclass(frozen=True)
class SeedDifference:
    """One cell where the deck and memprof differ, with its cause.

    ``seed_row`` is the 1-based row of the deck's table (None for a row the deck omits);
    ``cause`` is one of: omitted row, not in memprof's model, typo, arithmetic slip, rounding
    slip, inconsistent convention, different design, empty cell, differs.
    """

    seed_row: int | None
    name: str | None
    layer: str
    column: str
    seed: str
    memprof: str
    cause: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class SeedComparison:
    """The deck's table (seed) beside memprof's, and every difference between them."""

    table: SeedTable
    differences: tuple[SeedDifference, ...]
    rows_params: int
    rows_activations: int
    corrected_activations: int
    params: int
    activations: int

    def to_dict(self) -> dict[str, Any]:
        """The ``seed`` key of the JSON output."""
        d = self.table.to_dict()
        d["rows_sum"] = {"params": self.rows_params, "activations": self.rows_activations}
        d["activations_slips_corrected"] = self.corrected_activations
        d["differences"] = [x.to_dict() for x in self.differences]
        return d


def _shape_json(shapes: tuple[Shape, ...]) -> Any:
    if not shapes:
        return None
    if len(shapes) == 1:
        return list(shapes[0])
    return [list(s) for s in shapes]


def shape_text(shapes: Sequence[Shape]) -> str:
    """Per-sample shapes as the deck prints them: ``(64,32,32)``, ``512``; several comma-joined."""
    parts = []
    for s in shapes:
        parts.append(str(s[0]) if len(s) == 1 else "(" + ",".join(map(str, s)) + ")")
    return ", ".join(parts)


def _size_text(v: Shape | None) -> str:
    if not v:
        return ""
    return str(v[0]) if len(set(v)) == 1 else "x".join(map(str, v))


def _size_int(v: Shape | None) -> int | None:
    return v[0] if v and len(set(v)) == 1 else None


def _per_sample(shapes: Sequence[Shape], batch_size: int) -> tuple[Shape, ...]:
    return tuple(tuple(s[1:]) if s and s[0] == batch_size else tuple(s) for s in shapes)


# -- building the table ------------------------------------------------------------------------


def _to_row(rec: LayerRecord, batch_size: int) -> TableRow:
    return TableRow(
        name=rec.name,
        layer=rec.layer,
        input_shape=_per_sample(rec.input_shapes, batch_size),
        output_shape=_per_sample(rec.output_shapes, batch_size),
        in_channels=rec.in_channels,
        out_channels=rec.out_channels,
        kernel=rec.kernel,
        stride=rec.stride,
        params=rec.params,
        activations=rec.activation_elements // batch_size,
        saved_bytes=rec.saved_bytes,
        grad_bytes=rec.grad_bytes,
        param_bytes=rec.param_bytes,
        reversible=rec.reversible,
    )


def _fold(prev: TableRow, rec: LayerRecord, batch_size: int) -> TableRow:
    return TableRow(
        name=f"{prev.name}+{rec.name}",
        layer=f"{prev.layer}+{rec.layer}",
        input_shape=prev.input_shape,
        output_shape=_per_sample(rec.output_shapes, batch_size),
        in_channels=prev.in_channels,
        out_channels=prev.out_channels,
        kernel=prev.kernel,
        stride=prev.stride,
        params=prev.params + rec.params,
        activations=prev.activations + rec.activation_elements // batch_size,
        saved_bytes=prev.saved_bytes + rec.saved_bytes,
        grad_bytes=prev.grad_bytes + rec.grad_bytes,
        param_bytes=prev.param_bytes + rec.param_bytes,
        reversible=prev.reversible,
    )


def _rows_from(recording: Recording, all_rows: bool) -> tuple[list[TableRow], list[str]]:
    """Rows for display: in-place parameter-free rows folded, empty rows hidden (unless all_rows)."""
    b = recording.batch_size
    rows: list[TableRow] = []
    hidden: list[str] = []
    for rec in recording.records:
        foldable = (
            not all_rows and rec.kind == "module" and rec.inplace and rec.params == 0 and rows
            and list(_per_sample(rec.input_shapes, b)) == list(rows[-1].output_shape)
        )
        if foldable:
            rows[-1] = _fold(rows[-1], rec, b)
            continue
        row = _to_row(rec, b)
        empty = not (row.params or row.activations or row.saved_bytes or row.grad_bytes)
        if empty and not all_rows:
            hidden.append(f"{row.name} ({row.layer})" if row.layer else row.name)
            continue
        rows.append(row)
    return rows, hidden


def build_layer_table(
    recording: Recording,
    *,
    all_rows: bool = False,
    seed: SeedTable | None = None,
    notes: Sequence[str] = (),
) -> LayerTable:
    """Aggregate a :class:`~memprof.recording.layers.Recording` into a :class:`LayerTable`.

    Args:
        recording: what :func:`memprof.recording.record_layers` returned.
        all_rows: show every row, unfolded and unhidden.
        seed: the deck's table to compare with, if any.
        notes: extra notes for the rendered outputs.

    Returns:
        The table, with totals that equal the sums of its rows.
    """
    rows, hidden = _rows_from(recording, all_rows)
    size = dtype_size(recording.dtype)
    activations = sum(r.activations for r in rows)
    totals = Totals(
        params=sum(r.params for r in rows),
        param_bytes=sum(r.param_bytes for r in rows),
        grad_bytes=sum(r.grad_bytes for r in rows),
        activations=activations,
        activation_bytes=activations * recording.batch_size * size,
        saved_bytes=sum(r.saved_bytes for r in rows),
    )
    if totals.params != recording.total_params:  # pragma: no cover - an attribution bug
        raise AssertionError(f"rows hold {totals.params} parameters, the model {recording.total_params}")
    comparison = compare_with_seed(rows, totals, seed) if seed is not None else None
    return LayerTable(
        model=recording.model_name,
        batch_size=recording.batch_size,
        dtype=_dtype_name(recording.dtype),
        depth=recording.depth,
        device=recording.device,
        rows=rows,
        hidden=hidden,
        totals=totals,
        seed=comparison,
        extra_notes=list(notes),
    )


def _dtype_name(dtype: torch.dtype) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    return str(dtype).replace("torch.", "")


# -- the seed comparison -----------------------------------------------------------------------


def _kind(layer: str) -> str:
    first = layer.split("+")[0].lower()
    if "conv" in first:
        return "conv"
    if "norm" in first:
        return "norm"
    if "pool" in first:
        return "pool"
    if first == "linear":
        return "linear"
    return "block"


def _seed_key(r: SeedRow) -> tuple[str, Shape]:
    return _kind(r.layer), parse_shape(r.output_shape)


def _row_key(r: TableRow) -> tuple[str, Shape]:
    return _kind(r.layer), r.output_shape[0] if len(r.output_shape) == 1 else ()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, int):
        return format_count(v)
    return str(v)


def _with_design_note(row_name: str, detail: str) -> str:
    """``detail`` plus the model's own reason for a design difference (models.SEED_DESIGN_NOTES)."""
    from ..models import SEED_DESIGN_NOTES

    note = next((v for k, v in SEED_DESIGN_NOTES.items() if row_name.rstrip("0123456789") == k), None)
    return detail if note is None else f"{detail}: {note}"


def compare_with_seed(rows: Sequence[TableRow], totals: Totals, seed: SeedTable) -> SeedComparison:
    """Align the deck's rows with memprof's and name the cause of every difference.

    Rows are aligned by (layer kind, output shape) with a longest-matching-blocks diff, so a
    row the deck omits shows up as an insertion. Causes are derived from the deck's own data:
    an input shape that differs from the deck's previous output is a typo; an activation count
    that differs from the product of the deck's own output shape is an arithmetic slip; a
    reversible row the deck counts is an inconsistent convention; different parameter counts
    are a different design; an empty deck cell is an empty cell.

    Returns:
        The :class:`SeedComparison`.
    """
    s_keys = [_seed_key(r) for r in seed.rows]
    m_keys = [_row_key(r) for r in rows]
    matcher = difflib.SequenceMatcher(a=s_keys, b=m_keys, autojunk=False)
    rows_params = sum(r.params for r in seed.rows)
    rows_acts = sum(r.activations for r in seed.rows)
    diffs: list[SeedDifference] = []
    omitted: list[TableRow] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2)):
                diffs.extend(_compare_row(i, seed, rows[j]))
            continue
        if tag in ("replace", "delete"):
            for i in range(i1, i2):
                s = seed.rows[i]
                diffs.append(SeedDifference(i + 1, None, s.layer, "row", f"{s.layer} {s.output_shape}", "",
                                            "not in memprof's model",
                                            "the deck has this row; memprof's model has no layer of this kind and output shape here"))
        if tag in ("replace", "insert"):
            omitted.extend(rows[j1:j2])
    if omitted:
        gap_p, gap_a = seed.params - rows_params, seed.activations - rows_acts
        om_p, om_a = sum(r.params for r in omitted), sum(r.activations for r in omitted)
        cause = "omitted row"
        if (gap_p, gap_a) == (om_p, om_a):
            why = (f"the deck's totals include it: they exceed the sum of the deck's rows by exactly the "
                   f"omitted rows ({gap_p:+,} parameters, {gap_a:+,} activations)")
        elif (gap_p, gap_a) == (0, 0):
            cause = "different design"
            why = "memprof's model adds this layer: the deck's totals equal the sum of its rows, so its model has none"
        else:
            why = (f"the deck's totals exceed the sum of its rows by {gap_p:+,} parameters and "
                   f"{gap_a:+,} activations; the omitted rows hold {om_p:,} and {om_a:,}")
        for r in omitted:
            diffs.append(SeedDifference(None, r.name, r.layer, "row", "",
                                        f"{r.layer} {shape_text(r.output_shape)}: {r.params:,} params, {r.activations:,} act.",
                                        cause, _with_design_note(r.name, why)))
    diffs.extend(_check_printed_memory(seed))
    corrected = sum(_corrected_activations(r) for r in seed.rows)
    diffs.sort(key=lambda d: (_order(d, rows, seed)))
    return SeedComparison(seed, tuple(diffs), rows_params, rows_acts, corrected, totals.params, totals.activations)


def _check_printed_memory(seed: SeedTable) -> list[SeedDifference]:
    """The deck's printed MiB against its own printed counts (4 B per float32 element)."""
    out = []
    for column, count, nbytes, printed, shown in (
        ("parameter memory", seed.params, seed.params * 4, seed.param_mib, seed.printed_param_memory),
        ("activation memory", seed.activations, seed.activations * 4 * seed.batch_size,
         seed.activation_mib, seed.printed_activation_memory),
    ):
        exact = nbytes / MiB
        if round(exact, 2) != printed:
            out.append(SeedDifference(
                None, "(totals)", "Total Memory", column, shown, f"{exact:.2f} MiB", "rounding slip",
                f"the deck's own total of {count:,} x 4 B = {exact:.4f} MiB, which rounds to "
                f"{exact:.2f}, not {printed:.2f}",
            ))
    return out


def _order(d: SeedDifference, rows: Sequence[TableRow], seed: SeedTable) -> tuple[int, int]:
    if d.name == "(totals)":
        return 1 << 30, 0
    names = {r.name: i for i, r in enumerate(rows)}
    if d.name is not None and d.name in names:
        return names[d.name], 0
    return (d.seed_row or 0) - 1, 1


def _corrected_activations(r: SeedRow) -> int:
    if _kind(r.layer) == "block":
        return r.activations
    return math.prod(parse_shape(r.output_shape))


def _compare_row(i: int, seed: SeedTable, row: TableRow) -> list[SeedDifference]:
    s = seed.rows[i]
    out: list[SeedDifference] = []

    def add(column: str, sv: Any, mv: Any, cause: str, detail: str) -> None:
        out.append(SeedDifference(i + 1, row.name, row.layer, column, _cell(sv), _cell(mv), cause, detail))

    # input shape
    s_in = parse_shape(s.input_shape)
    m_in = row.input_shape[0] if len(row.input_shape) == 1 else ()
    if s_in != m_in:
        prev = seed.rows[i - 1].output_shape if i > 0 else None
        if prev is not None and parse_shape(prev) != s_in:
            add("input_shape", s.input_shape, shape_text([m_in]), "typo",
                f"the deck's previous row outputs {prev}, and this row's own input channels read "
                f"{s.in_channels}; the input is {shape_text([m_in])}")
        else:
            add("input_shape", s.input_shape, shape_text([m_in]), "differs", "input shapes differ")
    # output shape (the alignment key; differs only for a multi-output row)
    if parse_shape(s.output_shape) != (row.output_shape[0] if len(row.output_shape) == 1 else ()):
        add("output_shape", s.output_shape, shape_text(row.output_shape), "differs", "output shapes differ")
    # channels, kernel, stride
    for column, sv, mv in (
        ("in_channels", s.in_channels, row.in_channels),
        ("out_channels", s.out_channels, row.out_channels),
        ("kernel", s.kernel, _size_int(row.kernel)),
        ("stride", s.stride, _size_int(row.stride)),
    ):
        if sv == mv:
            continue
        if sv is None:
            add(column, sv, mv, "empty cell", f"the deck leaves {column} empty for this {s.layer}")
        else:
            add(column, sv, mv, "differs", f"{column} differs")
    # parameters
    if s.params != row.params:
        delta = row.params - s.params
        add("params", s.params, row.params, "different design", _with_design_note(
            row.name, f"memprof's {row.name} ({row.layer}) has {row.params:,} parameters, the deck's {s.layer} "
            f"{s.params:,} ({delta:+,}, {100 * delta / s.params:+.2f}%)"))
    # activations
    if s.activations != row.activations:
        own = math.prod(parse_shape(s.output_shape))
        if row.reversible and s.activations > 0:
            add("activations", s.activations, row.activations, "inconsistent convention",
                f"the deck counts this reversible block's {s.activations:,} output elements, though by "
                "its own convention (its RevBlock rows show 0) a reversible block keeps none")
        elif _kind(s.layer) != "block" and s.activations != own:
            add("activations", s.activations, row.activations, "arithmetic slip",
                f"the deck's own output shape {s.output_shape} has {own:,} elements per sample, "
                f"not {s.activations:,}")
        else:
            add("activations", s.activations, row.activations, "differs", "activation counts differ")
    return out


# -- the result object -------------------------------------------------------------------------

_HEADERS = {
    "name": "Name",
    "input_shape": "Input",
    "layer": "Layer",
    "in_channels": "In ch",
    "out_channels": "Out ch",
    "kernel": "Kernel",
    "stride": "Stride",
    "output_shape": "Output",
    "params": "#Params",
    "activations": "#Activations",
    "saved_bytes": "Saved (autograd)",
    "grad_bytes": "Grad",
}

_COLUMNS = list(_HEADERS)


def _bytes(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ == "NAType":
        return ""
    return format_bytes(int(v))


_FORMATTERS = {
    "params": format_count,
    "activations": format_count,
    "in_channels": format_count,
    "out_channels": format_count,
    "saved_bytes": _bytes,
    "grad_bytes": _bytes,
}


@dataclass
class LayerTable:
    """The per-layer table of one model at one batch size and dtype.

    Printing it shows the text table. ``to_dataframe()``, ``to_markdown()``, ``to_csv()`` and
    ``to_json()`` give the other forms; per-row columns add up to :attr:`totals`.
    """

    model: str
    batch_size: int
    dtype: str
    depth: int | None
    device: str
    rows: list[TableRow]
    hidden: list[str]
    totals: Totals
    seed: SeedComparison | None = None
    extra_notes: list[str] = field(default_factory=list)

    # -- data ----------------------------------------------------------------------------------
    def to_dataframe(self) -> pd.DataFrame:
        """One row per table row, raw values (bytes as int); shapes and sizes as display text."""
        import pandas as pd

        data = [
            {
                "name": r.name,
                "input_shape": shape_text(r.input_shape),
                "layer": r.layer,
                "in_channels": r.in_channels,
                "out_channels": r.out_channels,
                "kernel": _size_text(r.kernel),
                "stride": _size_text(r.stride),
                "output_shape": shape_text(r.output_shape),
                "params": r.params,
                "activations": r.activations,
                "saved_bytes": r.saved_bytes,
                "grad_bytes": r.grad_bytes,
            }
            for r in self.rows
        ]
        df = pd.DataFrame(data, columns=_COLUMNS)
        for col in ("in_channels", "out_channels"):
            df[col] = df[col].astype("Int64")
        return df

    def _with_total(self) -> pd.DataFrame:
        import pandas as pd

        df = self.to_dataframe()
        total = {c: None for c in _COLUMNS}
        total.update(name="Total", layer="", params=self.totals.params, activations=self.totals.activations,
                     saved_bytes=self.totals.saved_bytes, grad_bytes=self.totals.grad_bytes)
        for c in ("input_shape", "kernel", "stride", "output_shape"):
            total[c] = ""
        out = pd.concat([df, pd.DataFrame([total], columns=_COLUMNS)], ignore_index=True)
        for col in ("in_channels", "out_channels"):
            out[col] = out[col].astype("Int64")
        return out

    # -- text ----------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        """``memprof table MODEL``, with batch size, dtype and depth."""
        depth = "all leaves" if self.depth is None else f"depth {self.depth}"
        return f"memprof table {self.model}: batch {self.batch_size}, {self.dtype}, {depth}"

    def notes(self) -> list[str]:
        """The lines under the table: totals in the deck's form, the truth, and conventions."""
        t, b = self.totals, self.batch_size
        size = dtype_size(DTYPES.get(self.dtype, torch.float32))
        notes = [
            f"Total parameters: {t.params:,} = {format_bytes(t.param_bytes)} as {self.dtype}"
            f" (gradients: {format_bytes(t.grad_bytes)}).",
            f"Total activations (deck convention, estimated): {t.activations:,} per sample = "
            f"{format_bytes(t.activation_bytes)} at batch {b} ({size} B per element).",
            f"Saved by autograd (measured, forward at batch {b} on the {self.device} device): "
            f"{format_bytes(t.saved_bytes)}.",
            "#Activations follows the deck: output elements per sample of conv, batch-norm, pooling "
            "and linear layers; an in-place ReLU adds none; a reversible block (a ReversibleSequence, or "
            "a module with one as a direct child) counts 0. 'Saved (autograd)' is measured: the storages autograd saves for backward "
            "(saved_tensors_hooks), each counted once at the first row that saves it, parameters "
            "and buffers excluded, the input batch included.",
            "MiB = 2^20 bytes (the deck's 'MB' are MiB).",
        ]
        if any("+" in r.layer for r in self.rows):
            notes.append("A row 'X+ReLU' folds an in-place, parameter-free layer into the layer whose "
                         "output it overwrites (the deck lists no ReLU rows); --all-rows unfolds it.")
        if self.hidden:
            notes.append("Hidden (nothing to report): " + ", ".join(self.hidden) + ".")
        notes.extend(self.extra_notes)
        return notes

    def _main_block(self, fmt: Format) -> str:
        return render_table(self._with_total(), fmt, title=self.title, notes=self.notes(),
                            headers=_HEADERS, formatters=_FORMATTERS)

    def _seed_blocks(self, fmt: Format, include_seed_table: bool) -> list[str]:
        c = self.seed
        if c is None:
            return []
        import pandas as pd

        s = c.table
        # Memory at the deck's own settings (float32, batch s.batch_size), whatever this table's.
        def mib(n: int) -> str:
            return f"{n / MiB:.2f}"

        totals = pd.DataFrame(
            [
                ["parameters", s.params, c.rows_params, c.rows_params, c.params],
                ["parameter memory, MiB (float32)", f"{s.param_mib:.2f} (printed '{s.printed_param_memory}')",
                 mib(c.rows_params * 4), mib(c.rows_params * 4), mib(c.params * 4)],
                ["activations per sample", s.activations, c.rows_activations, c.corrected_activations, c.activations],
                [f"activation memory, MiB (float32, batch {s.batch_size})",
                 f"{s.activation_mib:.2f} (printed '{s.printed_activation_memory}')",
                 mib(c.rows_activations * 4 * s.batch_size), mib(c.corrected_activations * 4 * s.batch_size),
                 mib(c.activations * 4 * s.batch_size)],
            ],
            columns=["quantity", "seed: deck total", "seed: sum of deck rows",
                     "seed rows, slips corrected", "memprof"],
        )
        counts = {"seed: deck total", "seed: sum of deck rows", "seed rows, slips corrected", "memprof"}
        blocks = [
            render_table(
                totals, fmt,
                title=f"Seed comparison: the deck's '{s.title}' table (seed) beside memprof's",
                headers=None,
                formatters={k: (lambda v: v if isinstance(v, str) else format_count(v)) for k in counts},
                notes=[
                    "Seed figures are the deck's, as published, never memprof's output; memprof's "
                    f"memory is shown at the deck's settings (float32, batch {s.batch_size}).",
                    "The deck writes MB; its figures are MiB (2^20 bytes).",
                ],
            )
        ]
        grouped: dict[tuple[Any, ...], list[SeedDifference]] = {}
        for d in c.differences:
            grouped.setdefault((d.seed_row, d.name, d.cause), []).append(d)
        diff_rows = []
        for (seed_row, name, cause), ds in grouped.items():
            columns = ", ".join(d.column for d in ds)
            detail = "; ".join(dict.fromkeys(d.detail for d in ds))
            if cause == "empty cell":
                detail = f"the deck leaves {' and '.join(d.column for d in ds)} empty for this row"
            diff_rows.append([
                "" if seed_row is None else seed_row, name or "", ds[0].layer, columns,
                ", ".join(d.seed or "(empty)" for d in ds), ", ".join(d.memprof for d in ds), cause, detail,
            ])
        diff_df = pd.DataFrame(diff_rows, columns=["seed row", "memprof row", "layer", "column", "seed",
                                                   "memprof", "cause", "detail"])
        blocks.append(render_table(
            diff_df, fmt, title=f"Rows that differ ({len(diff_rows)}), each with its cause",
            notes=["'seed row' is the row number in the deck's table (empty for a row the deck omits)."],
        ))
        if include_seed_table:
            seed_df = pd.DataFrame(
                [[i + 1, r.input_shape, r.layer, r.in_channels, r.out_channels, r.kernel, r.stride,
                  r.output_shape, r.params, r.activations] for i, r in enumerate(s.rows)],
                columns=["seed row", "input", "layer", "in ch", "out ch", "kernel", "stride", "output",
                         "#params", "#activations"],
            )
            for col in ("in ch", "out ch", "kernel", "stride"):
                seed_df[col] = seed_df[col].astype("Int64")
            blocks.append(render_table(
                seed_df, fmt, title=f"Seed: the deck's '{s.title}' table as published",
                formatters={"#params": format_count, "#activations": format_count},
                notes=[f"Printed totals: {s.params:,} parameters, {s.activations:,} activations; memory "
                       f"'{s.printed_param_memory}' and '{s.printed_activation_memory}' at batch "
                       f"{s.batch_size} (MiB).",
                       "Rows transcribed from ../shared/seed/reversible-nets-slides.md, slips included "
                       "(memprof/seed.py)."],
            ))
        return blocks

    def to_text(self, include_seed_table: bool = False) -> str:
        """The plain-text table, its notes and the seed comparison (where the deck has a table)."""
        return render_sections([self._main_block(Format.TEXT),
                                *self._seed_blocks(Format.TEXT, include_seed_table)])

    def to_markdown(self, include_seed_table: bool = False) -> str:
        """The Markdown table, notes and seed comparison; optionally the deck's table as published."""
        return render_sections([self._main_block(Format.MARKDOWN),
                                *self._seed_blocks(Format.MARKDOWN, include_seed_table)])

    def to_csv(self, comment: str | None = None) -> str:
        """CSV of the rows plus a final ``Total`` row; raw integers (bytes, counts)."""
        return render_csv(self._with_total(), comment=comment)

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure: model, batch_size, dtype, depth, device, rows, totals, seed."""
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "depth": self.depth,
            "device": self.device,
            "rows": [r.to_dict() for r in self.rows],
            "hidden": list(self.hidden),
            "totals": self.totals.to_dict(),
            "seed": self.seed.to_dict() if self.seed is not None else None,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return render_json(self.to_dict())

    def render(self, fmt: str = "text") -> str:
        """Render in one of ``text``, ``markdown``, ``csv``, ``json``.

        Raises:
            memprof.errors.UsageError: for an unknown format.
        """
        fmt = check_choice("format", fmt, FORMATS)
        return {"text": self.to_text, "markdown": self.to_markdown, "csv": self.to_csv,
                "json": self.to_json}[fmt]()

    def __str__(self) -> str:
        return self.to_text()


# -- the entry point ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TableArgs:
    """Checked arguments of :func:`layer_table`."""

    model: nn.Module | None  # None: build the registered model_name
    model_name: str
    input_shape: tuple[int, ...]
    batch_size: int
    dtype: torch.dtype
    depth: int | None
    device: str
    seed: SeedTable | None
    seed_note: str | None


def parse_input_shape(value: Any) -> tuple[int, ...]:
    """``"3,32,32"`` or ``(3, 32, 32)`` -> ``(3, 32, 32)``.

    Raises:
        memprof.errors.UsageError: unless it is one or more positive integers.
    """
    text = value if isinstance(value, str) else None
    try:
        parts = [p for p in value.replace("x", ",").split(",")] if text is not None else list(value)
        shape = tuple(int(str(p).strip()) for p in parts)
        if not shape or any(v <= 0 for v in shape) or any(isinstance(p, bool) for p in parts):
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(
            f"input shape {value!r} must be positive integers separated by commas, e.g. 3,32,32"
        ) from None
    return shape


def check_table_args(
    model: str | nn.Module | None,
    input_shape: Any = None,
    batch_size: Any = 128,
    dtype: Any = "float32",
    depth: Any = None,
    device: str = "meta",
) -> TableArgs:
    """Every check of :func:`layer_table`, in one place, before any work starts.

    ``model=None`` stands for a module that is not built yet (the CLI's
    ``package.module:factory``): everything else is checked before it is built.

    Raises:
        memprof.errors.UsageError: naming the bad value and the allowed ones.
    """
    from ..recording.layers import DEVICES

    batch_size = check_positive_int("batch size", batch_size)
    dtype_name = dtype if isinstance(dtype, str) else _dtype_name(dtype)
    check_choice("dtype", dtype_name, DTYPES)
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' is not available here; allowed: meta, cpu")
    if depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int):
            try:
                depth = int(str(depth))
            except ValueError:
                raise UsageError(f"depth must be a non-negative integer, got {depth!r}") from None
        if depth < 0:
            raise UsageError(f"depth must be a non-negative integer, got {depth!r}")
    seed = None
    seed_note = None
    if isinstance(model, str):
        from ..models import get_model_info, list_models

        if model not in list_models():
            raise UsageError(f"unknown model {model!r}; allowed: {', '.join(list_models())}")
        info = get_model_info(model)
        shape = parse_input_shape(input_shape) if input_shape is not None else tuple(info.input_shape)
        default_depth = info.table_depth
        seed = get_seed_table(model)
        if depth is None:
            depth = default_depth
        elif seed is not None and depth != default_depth:
            seed_note = (f"No seed comparison: the deck's table is at the default depth "
                         f"{default_depth}, this table at depth {depth}.")
            seed = None
        if seed is not None and shape != (3, 32, 32):
            seed_note = f"No seed comparison: the deck's table is for (3,32,32) inputs, not {shape_text([shape])}."
            seed = None
        name = model
        module = None  # built by layer_table, after every check
    elif model is None or isinstance(model, nn.Module):
        if input_shape is None:
            what = "a model" if model is None else f"a {type(model).__name__}"
            raise UsageError(
                f"input shape is required for {what} that is not a registered model, "
                "e.g. --input-shape 3,32,32"
            )
        shape = parse_input_shape(input_shape)
        name = type(model).__name__ if model is not None else "model"
        module = model
    else:
        raise TypeError(f"model must be a registered name or an nn.Module, got {type(model).__name__}")
    return TableArgs(module, name, shape, batch_size, DTYPES[dtype_name], depth, device, seed, seed_note)


def layer_table(
    model: str | nn.Module,
    input_shape: Sequence[int] | str | None = None,
    batch_size: int = 128,
    dtype: str | torch.dtype = "float32",
    depth: int | None = None,
    *,
    device: str = "meta",
    all_rows: bool = False,
) -> LayerTable:
    """The per-layer table of a model: the deck's columns beside what autograd really saves.

    One training-mode forward (no backward) runs at the batch size; hooks record every row and
    a ``saved_tensors_hooks`` pack hook the bytes autograd saves for it. The model is left
    exactly as it was (weights, buffers, train/eval mode, hooks, RNG state).

    Args:
        model: a registered name (:func:`memprof.models.list_models`) or any ``nn.Module``.
        input_shape: one sample's shape without the batch dimension (``(3, 32, 32)`` or
            ``"3,32,32"``); required for an ``nn.Module``, defaults to the registered one.
        batch_size: the batch the pass runs with (default 128, the deck's).
        dtype: ``float32``, ``bfloat16`` or ``float16``; parameters, buffers and the input are
            converted for the pass (the model itself is not changed).
        depth: rows are the modules whose qualified name has ``depth`` dot-separated parts,
            and leaves above that (like torchinfo's depth). None: the registered model's
            default (the deck's rows), or every leaf for an ``nn.Module``; 0: one row.
        device: ``meta`` (default: exact shapes, dtypes and storages without arithmetic; follows
            the CPU's dispatch), ``cpu`` or ``cuda`` for a real pass.
        all_rows: show every row: in-place ReLU rows unfolded, empty rows not hidden.

    Returns:
        A :class:`LayerTable`; ``print()`` it, or call ``to_dataframe()``, ``to_markdown()``,
        ``to_csv()``, ``to_json()``.

    Raises:
        memprof.errors.UsageError: for a bad argument (naming it and the allowed values), or an
            input shape the model's forward rejects (naming the layer that failed and the
            layers that ran).
        TypeError: if ``model`` is neither a name nor an ``nn.Module``.
    """
    from ..recording.layers import record_layers

    args = check_table_args(model, input_shape, batch_size, dtype, depth, device)
    module = args.model if args.model is not None else _build_registered(args.model_name, args.device)
    recording = record_layers(
        module, args.input_shape, batch_size=args.batch_size, dtype=args.dtype,
        depth=args.depth, device=args.device, model_name=args.model_name,
    )
    notes = [args.seed_note] if args.seed_note else []
    if args.device == "meta" and args.dtype != torch.float32 and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()
    ):
        notes.append(_REDUCED_BN_NOTE)
    return build_layer_table(recording, all_rows=all_rows, seed=args.seed, notes=notes)


# NOTE [ Reduced precision on the meta device ]
# In bfloat16/float16 a training-mode BatchNorm saves its per-channel batch mean and inverse
# std. The meta kernels (like CUDA's) keep them in float32; the CPU kernel keeps them in the
# input dtype. So a meta pass counts 4 bytes per BatchNorm channel more than a CPU pass (a few
# KiB for VGG-19, independent of the batch size); everything else is identical. The table says
# so, and --device cpu/cuda measures a given device exactly.
_REDUCED_BN_NOTE = (
    "In reduced precision the meta pass keeps each BatchNorm's saved batch statistics in float32, "
    "as CUDA does; the CPU kernel keeps them in the input dtype (4 B per channel less). Use "
    "--device cpu or cuda to measure one device exactly."
)


def _build_registered(name: str, device: str) -> nn.Module:
    """Build a registered model; for a meta pass, directly on the meta device (no weight init)."""
    from ..models import get_model

    if device == "meta":
        try:
            with torch.device("meta"):
                return get_model(name)
        except (NotImplementedError, RuntimeError):  # an initialiser without a meta kernel
            pass
    return get_model(name)


# -- reports -----------------------------------------------------------------------------------


def write_table_reports(out_dir: Path) -> list[Path]:
    """``reports/<model>.md`` and ``.csv`` for vgg19, revvgg and irevvgg (batch 128, float32).

    Returns:
        The paths written.
    """
    from ..reporting import atomic_write_text, provenance

    out_dir = Path(out_dir)
    written = []
    for name in REPORT_MODELS:
        table = layer_table(name)
        command = "memprof report tables"
        flag = " --seed-table" if table.seed is not None else ""
        same = f"`memprof table {name} --format markdown{flag}` prints the same tables."
        md = f"{provenance(command)}\n\n{same}\n\n" + table.to_markdown(include_seed_table=True)
        written.append(atomic_write_text(out_dir / f"{name}.md", md))
        csv = table.to_csv(comment=provenance(f"{command}") + f" Same as `memprof table {name} --format csv`.")
        written.append(atomic_write_text(out_dir / f"{name}.csv", csv))
    return written
