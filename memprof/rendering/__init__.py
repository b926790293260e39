"""Rendering: results as text, Markdown, CSV, JSON, DataFrames and plots; never imports hook code.

:mod:`~memprof.rendering.result` defines the one result protocol; each result class adds it to
the plain dataclass aggregation computed (:class:`~memprof.rendering.layer_table.LayerTable`,
:class:`~memprof.rendering.step.StepProfile`, :class:`~memprof.rendering.sweep.SweepResult`,
:class:`~memprof.rendering.compare.StrategyComparison`, :class:`~memprof.rendering.tracked.TrackRecording`). :mod:`~memprof.rendering.tables`
renders DataFrames; :mod:`~memprof.rendering.plots` draws Figures from DataFrames or a timeline;
:mod:`~memprof.rendering.transformers` and :mod:`~memprof.rendering.training` render the
transformer and training reports from plain rows.
"""

from __future__ import annotations
