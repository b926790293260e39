"""The deck's per-layer table (seed) beside memprof's: every difference, with its cause.

Rows are aligned by (layer kind, output shape); each difference is named from the deck's own
data (NOTE in :func:`compare_with_seed`). The deck's tables themselves are in :mod:`memprof.seed`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..seed import SeedRow, SeedTable, parse_shape
from ..units import MiB, format_count
from .table_rows import Shape, TableRow, Totals, shape_text, size_int

__all__ = ["SeedComparison", "SeedDifference", "compare_with_seed"]

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

    # the kind of pooling (rows are aligned by kind, so a max-pool and an average-pool align)
    if _kind(s.layer) == "pool" and s.layer.lower() != row.layer.lower():
        add("layer", s.layer, row.layer, "different design", _with_design_note(
            row.name, f"memprof's {row.name} is {row.layer}, the deck's {s.layer}"))
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
        ("kernel", s.kernel, size_int(row.kernel)),
        ("stride", s.stride, size_int(row.stride)),
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
