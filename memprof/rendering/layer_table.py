"""The per-layer table as text, Markdown, CSV, JSON, a DataFrame and a plot: :class:`LayerTable`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..aggregation.layer_table import LayerTableData
from ..aggregation.table_rows import shape_text, size_text
from ..units import dtype_size, format_bytes, format_count, is_blank
from ..vocabulary import DTYPES, Format
from .plots import plot_layer_activations
from .result import Result
from .seed_comparison import seed_blocks
from .tables import render_csv, render_json, render_sections, render_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LayerTable"]

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
    return "" if is_blank(v) else format_bytes(int(v))


_FORMATTERS = {
    "params": format_count,
    "activations": format_count,
    "in_channels": format_count,
    "out_channels": format_count,
    "saved_bytes": _bytes,
    "grad_bytes": _bytes,
}


class LayerTable(LayerTableData, Result):
    """The per-layer table of one model at one batch size and dtype (:class:`LayerTableData`).

    Printing it shows the text table. ``to_dataframe()``, ``to_markdown()``, ``to_csv()``,
    ``to_json()``, ``render(format)`` and ``plot()`` give the other forms; per-row columns add
    up to :attr:`totals`.
    """

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
                "kernel": size_text(r.kernel),
                "stride": size_text(r.stride),
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
        return [] if self.seed is None else seed_blocks(self.seed, fmt, include_seed_table)

    def _render(self, fmt: Format, include_seed_table: bool = False) -> str:
        """The table, its notes and the seed comparison; optionally the deck's table as published."""
        return render_sections([self._main_block(fmt), *self._seed_blocks(fmt, include_seed_table)])

    def to_text(self, include_seed_table: bool = False) -> str:
        """The plain-text table, its notes and the seed comparison (where the deck has a table)."""
        return self._render(Format.TEXT, include_seed_table)

    def to_markdown(self, include_seed_table: bool = False) -> str:
        """The Markdown table, notes and seed comparison; optionally the deck's table as published."""
        return self._render(Format.MARKDOWN, include_seed_table)

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

    def plot(self, path: str | Path | None = None) -> Any:
        """Activation memory per row: the deck's convention beside autograd's (see rendering.plots).

        Args:
            path: write a PNG there if given.

        Returns:
            The matplotlib Figure.
        """
        dtype = DTYPES.get(self.dtype, torch.float32)
        return plot_layer_activations({self.model: self.to_dataframe()}, self.batch_size, path,
                                      bytes_per_element=dtype_size(dtype))
