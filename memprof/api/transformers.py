"""ViT against Rev-ViT, measured: the activation peak over depth, and Rev-ViT's step time against its twin.

:func:`depth_sweep` profiles one training step of ``vit`` and ``revvit`` at each depth
(estimated under FakeTensorMode); :func:`time_twins` times ``vit``, ``revvit`` and ``revvit``
with ``reversible=False`` side by side (:func:`memprof.recording.runner.time_steps`, CPU time,
one intra-op thread). The rows and ratios are computed in :mod:`memprof.aggregation.transformers`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..aggregation.transformers import (
    DEPTHS,
    REPORT_BATCH_SIZE,
    TIMING_REPEATS,
    TWIN,
    depth_row,
    twin_timing,
)
from ..recording.runner import StepSetup, make_optimizer, run_step, time_steps
from ..recording.threads import one_thread
from .step import profile_step

__all__ = ["depth_sweep", "time_twins"]


def depth_sweep(depths: Sequence[int] = DEPTHS, batch_size: int = REPORT_BATCH_SIZE,
                **options: Any) -> list[dict[str, Any]]:
    """Estimated activation and step peaks of vit and revvit at each depth.

    Args:
        depths: the depths.
        batch_size: samples per step.
        **options: other ViT options (``width``, ``heads``, ...), the same for both.

    Returns:
        One dict per depth (:func:`memprof.aggregation.transformers.depth_row`).

    Raises:
        UsageError: for a bad option (from the model's builder) or batch size.
    """
    from ..models import get_model

    rows = []
    for depth in depths:
        prof, params = {}, {}
        for name in ("vit", "revvit"):
            torch.manual_seed(0)
            model = get_model(name, depth=depth, **options)
            params[name] = sum(p.numel() for p in model.parameters())
            prof[name] = profile_step(model, batch_size, (3, 32, 32), estimate=True, name=name)
        if params["vit"] != params["revvit"]:
            raise AssertionError(f"vit and revvit differ in parameters at depth {depth}: {params}")
        rows.append(depth_row(depth, prof["vit"], prof["revvit"], params["vit"]))
    return rows


def time_twins(depth: int = 12, batch_size: int = REPORT_BATCH_SIZE, repeats: int = TIMING_REPEATS,
               **options: Any) -> dict[str, Any]:
    """CPU time of one training step of vit, revvit and revvit(reversible=False), interleaved.

    Every model is set up and warmed up first; then each round runs one step of each in turn
    (NOTE [ Step times side by side ] in :mod:`memprof.recording.runner`), timed with
    ``time.process_time`` on one intra-op thread, so that other processes on the machine
    change the wall time but hardly the CPU time.

    Returns:
        :func:`memprof.aggregation.transformers.twin_timing`'s dict.
    """
    from ..models import get_model

    with one_thread():
        torch.manual_seed(0)
        models = {"vit": get_model("vit", depth=depth, **options)}
        torch.manual_seed(0)
        models["revvit"] = get_model("revvit", depth=depth, **options)
        models[TWIN] = get_model("revvit", reversible=False, depth=depth, **options)
        models[TWIN].load_state_dict(models["revvit"].state_dict())
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, 3, 32, 32, generator=g)
        y = torch.randint(10, (batch_size,), generator=g)
        setups = {}
        for name, model in models.items():
            model.train()
            opt = make_optimizer("sgd", model.parameters())
            run_step(model, opt, x, y)  # warm-up: optimizer state, caches
            setups[name] = StepSetup(model, opt, x, y)
        times = time_steps(setups, repeats, clock=time.process_time)
    return twin_timing({n: t.rounds for n, t in times.items()}, depth, batch_size, repeats)
