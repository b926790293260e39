"""The public entry points: check the arguments once, run (recording), compute (aggregation), wrap.

Each entry point checks every argument first (:mod:`memprof.validation`), records with
:mod:`memprof.recording`, computes with :mod:`memprof.aggregation` and returns a result from
:mod:`memprof.rendering` that renders itself (``render(format)``, ``to_dataframe()``,
``to_json()``, ``plot(path)``). Each also comes as ``check_*_args`` plus ``run_*`` for callers
(the CLI) that must do work between the checks and the run. The functions are exported by the
package root (``memprof.profile_step`` ...); the submodules are named after them.
"""

from __future__ import annotations
