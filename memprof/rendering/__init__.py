"""Rendering: tables (text, Markdown, CSV, JSON) built from DataFrames; never imports hook code."""

from __future__ import annotations

from .tables import FORMATS, Format, format_count, render_csv, render_json, render_sections, render_table

__all__ = ["FORMATS", "Format", "format_count", "render_csv", "render_json", "render_sections", "render_table"]
