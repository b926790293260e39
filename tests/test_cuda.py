"""CUDA paths of the step profiler (skipped without a GPU; benchmarks/cuda_check.py goes further)."""

from __future__ import annotations

import pytest
import torch

from memprof.aggregation.step import profile_step

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _model():
    from tests.test_step import tiny_reversible

    return tiny_reversible()


def test_measured_cuda_profile_adds_up():
    prof = profile_step(_model(), 8, (3, 8, 8), device="cuda")
    assert prof.mode == "measured" and prof.device.startswith("cuda")
    assert sum(prof.at_peak.values()) == prof.peak_bytes
    assert prof.at_peak["unattributed"] >= 0
    assert prof.reserved_peak_bytes >= prof.peak_bytes
    rows = {r["name"]: r for r in prof.modules}
    assert rows["1.blocks.0.F"]["backward_allocated_peak_bytes"] is not None  # recomputation seen
    assert all(r["forward_allocated_peak_bytes"] <= prof.peak_bytes for r in prof.modules
               if r["forward_allocated_peak_bytes"] is not None)
    assert max(p["peak_bytes"] for p in prof.phases.values()) == prof.peak_bytes


def test_cuda_estimate_matches_measurement():
    measured = profile_step(_model(), 8, (3, 8, 8), device="cuda")
    estimated = profile_step(_model(), 8, (3, 8, 8), device="cuda", estimate=True)
    assert estimated.attributed_peak_bytes == measured.attributed_peak_bytes
    assert estimated.activation_peak_bytes == measured.activation_peak_bytes
    # rounding is modelled; cuDNN/cuBLAS workspaces are not: the estimate may fall short by them
    assert estimated.peak_bytes <= measured.peak_bytes * 1.05
    assert estimated.peak_bytes >= measured.attributed_peak_bytes


def test_cuda_hooks_removed_after_error():
    from torch import nn

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(_model(), Boom())
    with pytest.raises(Exception, match="boom"):
        profile_step(model, 2, (3, 8, 8), device="cuda")
    assert torch._C._len_torch_dispatch_stack() == 0
