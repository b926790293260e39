"""The seed comparison as tables: the deck's totals beside memprof's, and every difference."""

from __future__ import annotations

from typing import Any

from ..aggregation.seed_comparison import SeedComparison, SeedDifference
from ..units import MiB, format_count
from ..vocabulary import Format
from .tables import render_table

__all__ = ["seed_blocks"]


def _mib(n: int) -> str:
    return f"{n / MiB:.2f}"


def _totals_block(c: SeedComparison, fmt: Format) -> str:
    """The deck's totals, the sums of its rows (as printed and with its slips corrected) and memprof's."""
    import pandas as pd

    s = c.table
    # Memory at the deck's own settings (float32, batch s.batch_size), whatever this table's.
    totals = pd.DataFrame(
        [
            ["parameters", s.params, c.rows_params, c.rows_params, c.params],
            ["parameter memory, MiB (float32)", f"{s.param_mib:.2f} (printed '{s.printed_param_memory}')",
             _mib(c.rows_params * 4), _mib(c.rows_params * 4), _mib(c.params * 4)],
            ["activations per sample", s.activations, c.rows_activations, c.corrected_activations, c.activations],
            [f"activation memory, MiB (float32, batch {s.batch_size})",
             f"{s.activation_mib:.2f} (printed '{s.printed_activation_memory}')",
             _mib(c.rows_activations * 4 * s.batch_size), _mib(c.corrected_activations * 4 * s.batch_size),
             _mib(c.activations * 4 * s.batch_size)],
        ],
        columns=["quantity", "seed: deck total", "seed: sum of deck rows",
                 "seed rows, slips corrected", "memprof"],
    )
    counts = {"seed: deck total", "seed: sum of deck rows", "seed rows, slips corrected", "memprof"}
    return render_table(
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


def _differences_block(c: SeedComparison, fmt: Format) -> str:
    """One line per (deck row, memprof row, cause), its columns joined."""
    import pandas as pd

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
    return render_table(
        diff_df, fmt, title=f"Rows that differ ({len(diff_rows)}), each with its cause",
        notes=["'seed row' is the row number in the deck's table (empty for a row the deck omits)."],
    )


def _published_block(c: SeedComparison, fmt: Format) -> str:
    """The deck's table as published, slips included."""
    import pandas as pd

    s = c.table
    seed_df = pd.DataFrame(
        [[i + 1, r.input_shape, r.layer, r.in_channels, r.out_channels, r.kernel, r.stride,
          r.output_shape, r.params, r.activations] for i, r in enumerate(s.rows)],
        columns=["seed row", "input", "layer", "in ch", "out ch", "kernel", "stride", "output",
                 "#params", "#activations"],
    )
    for col in ("in ch", "out ch", "kernel", "stride"):
        seed_df[col] = seed_df[col].astype("Int64")
    return render_table(
        seed_df, fmt, title=f"Seed: the deck's '{s.title}' table as published",
        formatters={"#params": format_count, "#activations": format_count},
        notes=[f"Printed totals: {s.params:,} parameters, {s.activations:,} activations; memory "
               f"'{s.printed_param_memory}' and '{s.printed_activation_memory}' at batch "
               f"{s.batch_size} (MiB).",
               "Rows transcribed from ../shared/seed/reversible-nets-slides.md, slips included "
               "(memprof/seed.py)."],
    )


def seed_blocks(c: SeedComparison, fmt: Format, include_seed_table: bool = False) -> list[str]:
    """The seed comparison's tables: totals side by side, each difference with its cause, and
    optionally the deck's table as published."""
    blocks = [_totals_block(c, fmt), _differences_block(c, fmt)]
    if include_seed_table:
        blocks.append(_published_block(c, fmt))
    return blocks
