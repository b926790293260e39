"""The per-layer table, computed: rows from a recording, folded and hidden for display, and totals.

:func:`build_layer_table` turns a :class:`~memprof.recording.layers.Recording` into a
:class:`LayerTableData` whose totals equal the sums of its rows; for the models the deck
tabulates, :mod:`memprof.aggregation.seed_comparison` adds the comparison with the deck.
Rendering lives in :mod:`memprof.rendering.layer_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..seed import SeedTable
from ..units import dtype_size
from ..vocabulary import dtype_name
from .seed_comparison import SeedComparison, compare_with_seed
from .table_rows import TableRow, Totals, per_sample

if TYPE_CHECKING:
    from ..recording.layers import LayerRecord, Recording

__all__ = ["LayerTableData", "TableRow", "Totals", "build_layer_table"]

# NOTE [ Folding and hiding rows ]
# The deck lists no ReLU rows. An in-place, parameter-free activation (ReLU(inplace=True))
# writes into the storage of the layer before it, yet autograd saves that storage for it (relu_
# saves its result), so its row is not empty: dropping it would break the sums. By default
# such a row is folded into the row before it (its layer becomes "BatchNorm2d+ReLU", its name
# "features.1+features.2", its bytes add up), which gives the deck's rows with correct sums.
# Rows with nothing to report at all (no parameters, no activations, nothing saved: a Flatten,
# a view) are hidden and named in the notes. all_rows=True shows every row unfolded.


def _to_row(rec: LayerRecord, batch_size: int) -> TableRow:
    return TableRow(
        name=rec.name,
        layer=rec.layer,
        input_shape=per_sample(rec.input_shapes, batch_size),
        output_shape=per_sample(rec.output_shapes, batch_size),
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
        output_shape=per_sample(rec.output_shapes, batch_size),
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
            and list(per_sample(rec.input_shapes, b)) == list(rows[-1].output_shape)
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
) -> LayerTableData:
    """Aggregate a :class:`~memprof.recording.layers.Recording` into a :class:`LayerTableData`.

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
    return LayerTableData(
        model=recording.model_name,
        batch_size=recording.batch_size,
        dtype=dtype_name(recording.dtype),
        depth=recording.depth,
        device=recording.device,
        rows=rows,
        hidden=hidden,
        totals=totals,
        seed=comparison,
        extra_notes=list(notes),
    )


@dataclass
class LayerTableData:
    """The per-layer table of one model at one batch size and dtype, as plain data.

    Attributes:
        model, batch_size, dtype, depth, device: what was recorded.
        rows: the displayed rows; hidden: rows with nothing to report (NOTE [ Folding and hiding rows ]).
        totals: sums of the rows' columns.
        seed: the comparison with the deck's table, where the deck has one.
        extra_notes: notes for the rendered outputs.
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
