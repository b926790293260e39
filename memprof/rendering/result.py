"""The one result protocol: ``to_dataframe()``, ``to_json()``, ``render(format)`` and ``plot(path)``.

Every result memprof returns (:class:`~memprof.rendering.layer_table.LayerTable`,
:class:`~memprof.rendering.step.StepProfile`, :class:`~memprof.rendering.sweep.SweepResult`,
:class:`~memprof.rendering.compare.StrategyComparison`, and the training's
``ClassificationReport``) is the plain dataclass aggregation computed plus this protocol:

- ``to_dataframe()``: raw values (bytes as integers) in a pandas DataFrame;
- ``to_csv()`` and ``to_json()``: the machine forms (raw values);
- ``to_text()`` and ``to_markdown()``: the human forms (MiB/GiB labelled, notes under tables);
- ``render(format)``: one of those four by name (``text``, ``markdown``, ``csv``, ``json``), so
  a caller (the CLI) never branches on the format itself;
- ``plot(path=None)``: a matplotlib ``Figure`` (written as PNG when ``path`` is given), where
  the result has a picture.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Self

from ..validation import check_format
from ..vocabulary import Format

__all__ = ["Result"]

class Result:
    """Mixin giving a result dataclass ``render``, ``to_text``, ``to_markdown`` and ``__str__``.

    A subclass implements ``_render(fmt, **options)`` for text and Markdown, ``to_csv()`` and
    ``to_json()``; ``render`` dispatches on the format name.
    """

    @classmethod
    def from_data(cls, data: Any) -> Self:
        """The result for the plain dataclass ``data`` that aggregation returned (same fields)."""
        return cls(**{f.name: getattr(data, f.name) for f in fields(data)})

    def _render(self, fmt: Format, **options: Any) -> str:  # pragma: no cover - each result has one
        raise NotImplementedError

    def to_csv(self) -> str:  # pragma: no cover - each result has one
        raise NotImplementedError

    def to_json(self) -> str:  # pragma: no cover - each result has one
        raise NotImplementedError

    def to_text(self, **options: Any) -> str:
        """The tables as plain text, with their notes."""
        return self._render(Format.TEXT, **options)

    def to_markdown(self, **options: Any) -> str:
        """The tables as Markdown, with their notes."""
        return self._render(Format.MARKDOWN, **options)

    def __str__(self) -> str:
        return self.to_text()

    def render(self, fmt: str = "text", **options: Any) -> str:
        """Render in one of ``text``, ``markdown``, ``csv``, ``json``.

        Args:
            fmt: the format name.
            options: options of the human forms (text and Markdown), e.g. ``max_modules``.

        Raises:
            memprof.validation.UsageError: for an unknown format.
        """
        fmt = Format(check_format(fmt))
        if fmt is Format.CSV:
            return self.to_csv()
        if fmt is Format.JSON:
            return self.to_json()
        return self._render(fmt, **options)
