"""Aggregation: records in, plain dataclasses out.

Per-layer tables and their totals (:mod:`~memprof.aggregation.layer_table`), the comparison with
the deck's tables (:mod:`~memprof.aggregation.seed_comparison`), one step's peaks and breakdown
(:mod:`~memprof.aggregation.step`), the steps of a user's own loop
(:mod:`~memprof.aggregation.tracked`), the batch-size search (:mod:`~memprof.aggregation.fit`),
sweeps (:mod:`~memprof.aggregation.sweep`), the strategy comparison
(:mod:`~memprof.aggregation.compare`), ViT against Rev-ViT over depth
(:mod:`~memprof.aggregation.transformers`) and training runs side by side
(:mod:`~memprof.aggregation.training`). Nothing here runs a model, installs a hook, formats for
display or writes a file: it reads what :mod:`memprof.recording` returned.
"""

from __future__ import annotations
