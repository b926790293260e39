"""Aggregation: records -> tables and totals (per-layer tables, seed comparisons)."""

from __future__ import annotations

from .table import LayerTable, SeedComparison, SeedDifference, TableRow, Totals, build_layer_table, layer_table

__all__ = ["LayerTable", "SeedComparison", "SeedDifference", "TableRow", "Totals", "build_layer_table", "layer_table"]
