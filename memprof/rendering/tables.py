"""Generic table rendering: a DataFrame, a title and notes -> text, Markdown, CSV or JSON.

Nothing here knows about layers or hooks: every verb builds a DataFrame of raw values
(bytes as integers, counts as integers) and renders it here. ``formatters`` turn raw values
into display strings for text and Markdown only; CSV and JSON keep the raw values so that
they can be summed and compared by machines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..units import is_blank
from ..validation import check_format
from ..vocabulary import Format

if TYPE_CHECKING:  # pandas is imported lazily: `import memprof` stays light
    import pandas as pd

__all__ = [
    "render_table",
    "render_csv",
    "render_json",
    "render_sections",
]


Formatter = Callable[[Any], str]


def _display_frame(
    df: pd.DataFrame, headers: Mapping[str, str] | None, formatters: Mapping[str, Formatter] | None
) -> tuple[list[str], list[list[str]]]:
    formatters = formatters or {}
    headers = headers or {}
    cols = list(df.columns)
    rows = []
    for record in df.itertuples(index=False, name=None):
        row = []
        for col, value in zip(cols, record):
            if col in formatters:
                row.append(formatters[col](value))
            else:
                row.append("" if is_blank(value) else str(value))
        rows.append(row)
    return [headers.get(c, c) for c in cols], rows


def _right_aligned(df: pd.DataFrame) -> list[bool]:
    import pandas as pd

    return [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]


def render_table(
    df: pd.DataFrame,
    fmt: str | Format = Format.TEXT,
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
    formatters: Mapping[str, Formatter] | None = None,
) -> str:
    """Render one table with its title and notes.

    Args:
        df: the rows, raw values (integers for bytes and counts).
        fmt: ``text``, ``markdown``, ``csv`` or ``json``.
        title: a heading (text: underlined line; Markdown: ``###``); ignored by CSV/JSON.
        notes: lines printed under the table (text/Markdown only).
        headers: display names of columns (text/Markdown only; CSV/JSON keep column names).
        formatters: per-column display functions (text/Markdown only).

    Returns:
        The rendered string, ending with a newline.

    Raises:
        memprof.errors.UsageError: for an unknown format.
    """
    fmt = Format(check_format(fmt))
    if fmt is Format.CSV:
        return render_csv(df)
    if fmt is Format.JSON:
        return render_json({"title": title, "notes": list(notes), "rows": df.to_dict(orient="records")})
    from tabulate import tabulate

    head, rows = _display_frame(df, headers, formatters)
    align = ["right" if r else "left" for r in _right_aligned(df)]
    out: list[str] = []
    if fmt is Format.MARKDOWN:
        if title:
            out += [f"### {title}", ""]
        out.append(tabulate(rows, head, tablefmt="github", disable_numparse=True, colalign=align))
        if notes:
            out.append("")
            out += [f"- {n}" for n in notes]
    else:
        if title:
            out += [title, "=" * len(title)]
        out.append(tabulate(rows, head, tablefmt="simple", disable_numparse=True, colalign=align))
        if notes:
            out.append("")
            out += list(notes)
    return "\n".join(out) + "\n"


def render_sections(blocks: Sequence[str]) -> str:
    """Join rendered blocks with one blank line between them."""
    return "\n".join(b.rstrip("\n") + "\n" for b in blocks if b)


def render_csv(df: pd.DataFrame, comment: str | None = None) -> str:
    """CSV with a header row; an optional first line ``# comment`` (read with ``comment='#'``)."""
    body = df.to_csv(index=False, lineterminator="\n")
    return (f"# {comment}\n" if comment else "") + body


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def render_json(obj: Any) -> str:
    """Indented, key-order-preserving JSON ending with a newline (numpy scalars unwrapped)."""
    return json.dumps(_jsonable(obj), indent=2) + "\n"
