"""memprof.track(): any training loop, recorded step by step, with exact allocator peaks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.modules.module as module_hooks
import torch.optim.optimizer as optim_hooks
from torch import nn

import memprof
from memprof.api.track import track
from memprof.errors import UsageError
from memprof.recording.allocations import CpuAllocatorTracker
from memprof.recording.session import StopRecording


def _nbytes(tensors) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def _state_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)]


def _mlp() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    opt = torch.optim.Adam(model.parameters())

    def step() -> None:
        x = torch.randn(4, 3, 8, 8)
        y = torch.randint(10, (4,))
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return model, opt, step


def _replayed_peak(make: Callable, steps: int) -> int:
    """The allocator's peak over ``steps`` plain steps (profiler alone, no memprof hook), plus
    the parameters and buffers that existed before."""
    model, _, step = make()
    resident = _nbytes(list(model.parameters()) + list(model.buffers()))
    tracker = CpuAllocatorTracker()
    with tracker.track():
        for _ in range(steps):
            step()
    return resident + tracker.result.peak_increase


def _tracked(make: Callable, steps: int, mode: str = "fast"):
    model, opt, step = make()
    with track(mode=mode) as rec:
        for _ in range(steps):
            step()
    return rec, model, opt


def _check_invariants(rec) -> None:
    for s in rec.steps:
        assert sum(s.at_peak.values()) == s.peak_bytes  # categories add up, exactly
        assert min(s.at_peak.values()) >= 0
        assert s.activation_peak_bytes <= s.peak_bytes
        assert s.timeline is not None and len(s.timeline.total) > 0


def test_peak_is_the_allocator_replay_in_every_mode():
    replay = _replayed_peak(_mlp, 3)
    fast, _, _ = _tracked(_mlp, 3, "fast")
    fine, _, _ = _tracked(_mlp, 3, "fine")
    assert len(fast.steps) == len(fine.steps) == 3
    assert max(s.peak_bytes for s in fast.steps) == replay
    assert [s.peak_bytes for s in fast.steps][1:] == [s.peak_bytes for s in fine.steps][1:]
    assert fast.steps[-1].peak_bytes == replay
    _check_invariants(fast)
    _check_invariants(fine)
    assert fast.steps[-1].at_peak["unattributed"] == 0  # fast mode: every block has a role


def test_state_categories_are_the_model_and_optimizer_storages():
    rec, model, opt = _tracked(_mlp, 3)
    s = rec.steady_state
    assert s.at_peak["parameters"] == _nbytes(list(model.parameters()) + list(model.buffers()))
    assert s.at_peak["optimizer_state"] == _nbytes(_state_tensors(opt))
    assert s.model == "Sequential" and s.optimizer == "adam" and s.batch_size == 4
    assert s.input_shape == (3, 8, 8)
    names = {r["name"] for r in s.modules}
    assert {"Sequential", "Sequential.0", "Sequential.4"} <= names
    assert all(r["forward_peak_bytes"] <= s.peak_bytes for r in s.modules)
    assert {"forward", "backward", "optimizer"} <= set(s.phases)
    assert s.activation_peak_holders and s.activation_peak_holders[0]["bytes"] > 0


def test_two_optimizers_frozen_part_and_param_groups():
    torch.manual_seed(0)
    frozen = nn.Linear(16, 32)
    frozen.requires_grad_(False)
    body = nn.Linear(32, 32)
    head = nn.Linear(32, 4)
    model = nn.Sequential(frozen, nn.ReLU(), body, nn.ReLU(), head)
    opt_a = torch.optim.SGD([{"params": body.weight, "lr": 0.1}, {"params": body.bias, "lr": 0.01}], momentum=0.9)
    opt_b = torch.optim.AdamW(head.parameters())
    with track() as rec:
        for _ in range(3):
            x = torch.randn(8, 16)
            opt_a.zero_grad(set_to_none=True)
            opt_b.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt_a.step()
            opt_b.step()  # two optimizers one after the other: one step
    assert len(rec.steps) == 3
    s = rec.steady_state
    assert s.optimizer == "sgd + adamw"
    assert s.at_peak["parameters"] == _nbytes(model.parameters())
    trainable = list(body.parameters()) + list(head.parameters())
    state = _state_tensors(opt_a) + _state_tensors(opt_b)
    at_end = s.timeline.at(len(s.timeline.total) - 1)
    assert at_end["gradients"] == _nbytes([p.grad for p in trainable])
    assert all(p.grad is None for p in frozen.parameters())
    assert at_end["optimizer_state"] == _nbytes(state)
    _check_invariants(rec)


def test_gradient_accumulation_is_one_step_per_optimizer_step():
    model, opt, _ = _mlp()
    with track() as rec:
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            for _ in range(2):
                nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(10, (4,))).backward()
            opt.step()
    assert len(rec.steps) == 2
    phases = [p for p, _, _ in rec.steps[-1].timeline.phases]
    assert phases.count("forward") == 2 and phases.count("backward") == 2
    calls = {r["name"]: r["calls"] for r in rec.steps[-1].modules}
    assert calls["Sequential"] == 2


def _hook_state():
    return (len(module_hooks._global_forward_pre_hooks), len(module_hooks._global_forward_hooks),
            len(optim_hooks._global_optimizer_pre_hooks), len(optim_hooks._global_optimizer_post_hooks),
            torch.autograd.backward, torch.profiler.profile.start, torch.autograd._profiler_enabled(),
            torch._C._autograd._top_saved_tensors_default_hooks(False))


def test_hooks_are_removed_when_user_code_raises():
    before = _hook_state()
    model, opt, step = _mlp()
    with pytest.raises(ZeroDivisionError):
        with track() as rec:
            step()
            step()
            model(torch.randn(4, 3, 8, 8))
            1 / 0
    assert _hook_state() == before
    assert len(rec.steps) == 2 and rec.stopped_early  # the steps completed are reported
    with pytest.raises(RuntimeError):
        with track(mode="fine"):
            raise RuntimeError("user error")
    assert _hook_state() == before
    assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).shape == (1, 2)  # no dispatch mode left


def test_nesting_refuses_clearly():
    before = _hook_state()
    with track():
        with pytest.raises(RuntimeError, match="already recording"):
            with track():
                pass
        with pytest.raises(RuntimeError, match="torch.profiler cannot start inside memprof.track"):
            with torch.profiler.profile():
                pass
    with torch.profiler.profile():
        with pytest.raises(RuntimeError, match="cannot start inside torch.profiler"):
            with track():
                pass
    assert _hook_state() == before


def test_no_optimizer_step_is_one_step_and_said():
    model, _, _ = _mlp()
    with track() as rec:
        model(torch.randn(4, 3, 8, 8)).sum().backward()
    assert rec.no_optimizer_step and len(rec.steps) == 1
    assert any("never called optimizer.step()" in n for n in rec.notes)
    assert rec.steps[0].peak_bytes > 0


def test_max_steps_stops_the_code():
    model, opt, step = _mlp()
    with pytest.raises(StopRecording):
        with track(max_steps=2) as rec:
            for _ in range(10):
                step()
    assert len(rec.steps) == 2


def test_bad_arguments():
    with pytest.raises(UsageError, match="track mode"):
        with track(mode="slow"):
            pass


def test_json_steps_carry_the_profile_keys():
    rec, _, _ = _tracked(_mlp, 2)
    profile = memprof.profile_step(nn.Linear(4, 2), 2, (4,))
    doc = rec.to_dict()
    assert len(doc["steps"]) == 2
    for item in doc["steps"]:
        assert set(item) == set(profile.to_dict())
    text = rec.to_text()
    assert "Steps recorded" in text and "At the peak" in text
