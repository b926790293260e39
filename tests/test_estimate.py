"""Estimation: equal to the measurement on the CPU, the CUDA allocator model, MemTracker cross-check."""

from __future__ import annotations

import functools

import pytest
import torch

from memprof.api.step import profile_step
from memprof.models import get_model, get_model_info, list_models
from memprof.recording.cuda_allocator import (
    CudaCachingAllocatorModel,
    CudaOutOfMemory,
    round_cuda_request,
    simulate_cuda_allocator,
)
from memprof.recording.workspace import cublas_workspace_bytes
from memprof.recording.runner import make_optimizer, run_step, targets_for, warm_up
from memprof.recording.threads import one_thread

MiB = 1 << 20
BATCH = 2


@functools.lru_cache(maxsize=None)
def _profiles(name: str):
    torch.manual_seed(0)
    model = get_model(name)
    shape = get_model_info(name).input_shape
    with one_thread():
        measured = profile_step(model, BATCH, shape, name=name)
        estimated = profile_step(model, BATCH, shape, name=name, estimate=True)
    return measured, estimated


@pytest.mark.parametrize("name", list_models())
def test_registered_model_breakdown_adds_up_with_small_gap(name):
    measured, _ = _profiles(name)
    assert sum(measured.at_peak.values()) == measured.peak_bytes
    gap = measured.at_peak["unattributed"]
    assert 0 <= gap < 0.03 * measured.peak_bytes, f"unattributed {gap} of {measured.peak_bytes}"


@pytest.mark.parametrize("name", list_models())
def test_estimate_equals_measured_attribution_on_cpu(name):
    measured, estimated = _profiles(name)
    tracked = {k: v for k, v in measured.at_peak.items() if k != "unattributed"}
    assert {k: v for k, v in estimated.at_peak.items() if k != "unattributed"} == tracked
    assert estimated.attributed_peak_bytes == measured.attributed_peak_bytes
    # the allocator peak includes kernel scratch (memprof.recording.workspace): within 1%
    assert abs(estimated.peak_bytes - measured.peak_bytes) <= 0.01 * measured.peak_bytes
    assert estimated.activation_peak_bytes == measured.activation_peak_bytes
    for m, e in zip(measured.modules, estimated.modules):
        assert m == e
    for ph in measured.phases:
        assert measured.phases[ph]["attributed_peak_bytes"] == estimated.phases[ph]["attributed_peak_bytes"]


def test_memtracker_agrees_on_vgg19():
    """PyTorch's MemTracker total at its peak is within 2% of memprof's measured peak."""
    from torch.distributed._tools.mem_tracker import MemTracker

    measured, _ = _profiles("vgg19")
    torch.manual_seed(0)
    model = get_model("vgg19").train()
    x = torch.randn(BATCH, *get_model_info("vgg19").input_shape)
    opt = make_optimizer("sgd", model.parameters())
    targets = warm_up(model, opt, x, targets_for(BATCH, torch.device("cpu"), 0))
    tracker = MemTracker()
    tracker.track_external(model, opt, x, targets)
    with one_thread(), tracker:
        run_step(model, opt, x, targets)
    total = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    assert abs(total - measured.peak_bytes) <= 0.02 * measured.peak_bytes
    assert total == measured.attributed_peak_bytes  # same storages, counted the same way


def test_reversible_models_hold_fewer_activations_than_vgg19():
    vgg = _profiles("vgg19")[1]
    for name in ("revvgg", "irevvgg"):
        assert _profiles(name)[1].at_peak["activations"] < vgg.at_peak["activations"]


def test_big_estimate_needs_no_memory():
    prof = profile_step(get_model("vgg19"), 8192, (3, 32, 32), estimate=True)
    assert prof.peak_bytes > 20 * (1 << 30)  # far more than this machine could allocate quickly


# ---- the CUDA caching allocator model ------------------------------------------------------
def test_round_cuda_request():
    assert [round_cuda_request(n) for n in (0, 1, 511, 512, 513, 1536)] == [0, 512, 512, 512, 1024, 1536]


def test_small_and_large_pool_segments():
    m = CudaCachingAllocatorModel()
    a = m.malloc(1000)
    assert (m.allocated, m.reserved) == (1024, 2 * MiB)  # small pool: one 2 MiB segment
    b = m.malloc(1000)
    assert m.reserved == 2 * MiB  # the split remainder serves it
    d = m.malloc(11 * MiB)
    # >= 10 MiB: a segment of the size rounded up to 2 MiB; the 1 MiB remainder is not split
    # off (large pool splits only remainders over 1 MiB), so the whole block counts
    assert (m.allocated, m.reserved) == (2048 + 12 * MiB, 2 * MiB + 12 * MiB)
    c = m.malloc(3 * MiB)
    assert m.reserved == 2 * MiB + 12 * MiB + 20 * MiB  # 1 MiB < size < 10 MiB: a 20 MiB segment
    e = m.malloc(11 * MiB)
    assert m.reserved == 34 * MiB  # served by the 17 MiB left in the 20 MiB segment
    for addr in (a, b, c, d, e):
        m.free(addr)
    assert m.allocated == 0 and m.reserved == 34 * MiB  # cached, not released


def test_free_blocks_merge_and_unsplit_remainder_counts():
    m = CudaCachingAllocatorModel()
    a, b = m.malloc(8 * MiB), m.malloc(8 * MiB)  # both from one 20 MiB segment
    assert m.reserved == 20 * MiB
    m.free(a)
    m.free(b)
    c = m.malloc(19 * MiB + 512)  # fits only in the merged 20 MiB block; remainder < 1 MiB: not split
    assert m.reserved == 20 * MiB and m.allocated == 20 * MiB
    m.free(c)


def test_simulation_replays_lives():
    lives = [(1, 3, 100), (2, None, 2 * MiB)]
    allocated, reserved = simulate_cuda_allocator(lives, 5)
    assert list(allocated) == [0, 512, 512 + 2 * MiB, 2 * MiB, 2 * MiB]
    assert reserved[-1] == 2 * MiB + 20 * MiB


def test_expandable_segments_grow_one_segment_and_merge():
    """Hand-computed from the documented rules: 20 MiB pages for the large pool, one segment."""
    plain, grown = CudaCachingAllocatorModel(), CudaCachingAllocatorModel(expandable_segments=True)
    for m in (plain, grown):
        m.a = m.malloc(3 * MiB)  # type: ignore[attr-defined]
    assert plain.reserved == grown.reserved == 20 * MiB  # a 20 MiB segment / one 20 MiB page
    for m in (plain, grown):
        m.b = m.malloc(30 * MiB)  # type: ignore[attr-defined]
    # plain: a new 30 MiB segment; expandable: the free 17 MiB at the end grows by one page
    assert (plain.reserved, grown.reserved) == (50 * MiB, 40 * MiB)
    assert plain.allocated == grown.allocated == 33 * MiB
    for m in (plain, grown):
        m.free(m.a)  # type: ignore[attr-defined]
        m.free(m.b)  # type: ignore[attr-defined]
        m.malloc(39 * MiB)
    # expandable: the whole 40 MiB merged into one block; plain: no segment holds 39 MiB
    assert (plain.reserved, grown.reserved) == (90 * MiB, 40 * MiB)
    assert grown.peak_reserved == 40 * MiB and plain.peak_allocated == 40 * MiB


def test_small_pool_expands_by_2mib_pages():
    m = CudaCachingAllocatorModel(expandable_segments=True)
    blocks = [m.malloc(MiB) for _ in range(3)]  # 1 MiB each: small pool, 2 MiB pages
    assert m.reserved == 4 * MiB and m.allocated == 3 * MiB
    for b in blocks:
        m.free(b)
    m.release_cached()
    assert m.reserved == 0


def test_capacity_releases_cached_segments_then_reports_oom():
    m = CudaCachingAllocatorModel(capacity=64 * MiB)
    a = m.malloc(30 * MiB)
    m.free(a)
    m.malloc(40 * MiB)  # 30 cached + 40 > 64: the free 30 MiB segment is released first
    assert m.reserved == 40 * MiB
    with pytest.raises(CudaOutOfMemory):
        m.malloc(30 * MiB)  # nothing cached left to release


def test_transient_workspace_counts_at_its_event_only():
    allocated, reserved = simulate_cuda_allocator([(1, None, 4 * MiB)], 3, transient=[(1, 8 * MiB)])
    assert list(allocated) == [0, 12 * MiB, 4 * MiB]  # the 8 MiB scratch lives inside event 1
    assert list(reserved) == [0, 20 * MiB, 20 * MiB]  # both fit one 20 MiB segment


def test_cublas_workspace_follows_the_documented_default(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert cublas_workspace_bytes(8) == 2 * 4096 * 1024 + 8 * 16 * 1024
    assert cublas_workspace_bytes(9) == 8 * 4096 * 1024
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert cublas_workspace_bytes(9) == 8 * 16 * 1024


def test_cuda_estimate_adds_rounding_as_unattributed():
    from tests.test_step import tiny_model

    prof = profile_step(tiny_model(), 2, (3, 8, 8), estimate=True, device="cuda")
    assert sum(prof.at_peak.values()) == prof.peak_bytes
    assert prof.at_peak["unattributed"] > 0  # 512-byte rounding of small tensors
    assert prof.reserved_peak_bytes >= prof.peak_bytes
    assert any("not modelled" in n and "not yet checked on a GPU" in n for n in prof.notes)
    # the Linear layer's matmul reserves a cuBLAS workspace that stays allocated
    assert prof.at_peak["unattributed"] >= cublas_workspace_bytes(8)
    grown = profile_step(tiny_model(), 2, (3, 8, 8), estimate=True, device="cuda", expandable_segments=True)
    assert grown.reserved_peak_bytes <= prof.reserved_peak_bytes


def test_memory_report_is_not_stale():
    """reports/memory.json holds the deterministic (tensor-owned) figures of reports/memory.md."""
    import json
    from pathlib import Path

    from memprof.reports.memory import BATCH_SIZE, MODELS, deterministic_figures

    path = Path(__file__).resolve().parent.parent / "reports" / "memory.json"
    if not path.exists():
        pytest.skip("reports/memory.json not generated yet: run `memprof report memory`")
    recorded = json.loads(path.read_text())
    assert recorded["batch_size"] == BATCH_SIZE
    for name in MODELS:
        torch.manual_seed(0)
        with one_thread():
            est = profile_step(get_model(name), BATCH_SIZE, get_model_info(name).input_shape, estimate=True)
        assert deterministic_figures(est) == recorded["models"][name], f"reports/memory.md is stale for {name}"


@pytest.mark.parametrize("padded", [False, True])
def test_hugging_face_all_ones_attention_mask(padded):
    """NOTE [ An all-ones attention mask in an estimate ]: the estimate takes the real run's branch and says so."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    mask = torch.ones(2, 48, dtype=torch.long)
    if padded:
        mask[1, 30:] = 0
    inputs = {"input_ids": torch.randint(256, (2, 48)), "attention_mask": mask, "labels": torch.randint(3, (2,))}
    est = profile_step(model, 8, inputs=inputs, estimate=True)
    meas = profile_step(model, 8, inputs=inputs)
    # without the NOTE's hook the all-ones estimate held the (8, 1, 48, 48) mask: 18 KiB more at the activation peak
    assert est.activation_peak_bytes == meas.activation_peak_bytes
    assert est.attributed_peak_bytes == meas.attributed_peak_bytes
    said = [n for n in est.notes if n.startswith("attention_mask is all ones")]
    assert len(said) == (0 if padded else 1)
    if said:
        assert "attention_mask=None" in said[0] and f"up to {8 * 48} bytes" in said[0]
    assert not any("attention_mask" in n for n in meas.notes)
