"""CUDA paths of the step profiler (skipped without a GPU; benchmarks/cuda_check.py goes further)."""

from __future__ import annotations

import pytest
import torch

from memprof.api.step import profile_step

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


# --- the reversible engine on the GPU -------------------------------------------------------


def _twins(dropout: float = 0.0):
    import copy

    from memprof.reversible import set_reversible
    from tests.test_reversible import make_seq

    rev = make_seq(4, c=16, dropout=dropout).cuda()
    plain = set_reversible(copy.deepcopy(rev), False)
    return rev, plain


def _step(model, x, w, seed=0):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    (model(x) * w).sum().backward()  # nothing holds the output: rebuilt in its own memory
    return x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reversible_gradients_equal_plain_on_cuda(dtype):
    from tests.helpers import rel_err

    torch.manual_seed(0)
    rev, plain = (m.to(dtype) for m in _twins())
    x = torch.randn(4, 16, 8, 8, device="cuda", dtype=dtype)
    w = torch.randn(16, 8, 8, device="cuda", dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    assert rel_err(_step(rev, x, w), _step(plain, x, w)) <= tol
    flat = [torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (rev, plain)]
    assert rel_err(flat[0], flat[1]) <= tol


def test_reversible_dropout_replays_the_cuda_rng():
    from tests.helpers import rel_err

    torch.manual_seed(1)
    rev, plain = _twins(dropout=0.2)
    x = torch.randn(4, 16, 8, 8, device="cuda")
    w = torch.randn(16, 8, 8, device="cuda")
    torch.cuda.manual_seed(5)
    state = torch.cuda.get_rng_state()
    g_rev = _step(rev, x, w, seed=5)
    after_rev = torch.cuda.get_rng_state()
    g_plain = _step(plain, x, w, seed=5)
    assert rel_err(g_rev, g_plain) <= 1e-5
    assert not torch.equal(state, after_rev)  # dropout drew numbers...
    assert torch.equal(after_rev, torch.cuda.get_rng_state())  # ...and backward drew none extra


def test_reversible_bf16_autocast_on_cuda_matches_plain():
    from tests.helpers import rel_err

    torch.manual_seed(2)
    rev, plain = _twins()
    x = torch.randn(4, 16, 8, 8, device="cuda")
    w = torch.randn(16, 8, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        g_rev = _step(rev, x, w)
        g_plain = _step(plain, x, w)
    assert rel_err(g_rev, g_plain) <= 2e-2  # bf16 rounding in F and G, float32 stream


def test_rebuilding_in_place_saves_one_output_on_cuda():
    from tests.test_reversible import make_seq

    torch.manual_seed(3)
    seq = make_seq(2, c=64).cuda()
    x = torch.randn(8, 64, 32, 32, device="cuda", requires_grad=True)
    w = torch.randn(64, 32, 32, device="cuda")
    seq(x).sum().backward()  # warm-up: cuDNN handles and workspaces exist before measuring
    peaks = {}
    for held in (False, True):
        x.grad = None
        seq.zero_grad(set_to_none=True)
        out = seq(x)
        loss = (out * w).sum()
        keep = out if held else None
        del out
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss.backward()
        torch.cuda.synchronize()
        peaks[held] = torch.cuda.max_memory_allocated() - base
        del keep
    assert peaks[True] - peaks[False] == x.numel() * 4
