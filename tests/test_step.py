"""Whole-step profiling: results unchanged, hooks removed, breakdown adds up, CLI and errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from memprof.api.step import fit_batch_size, profile_step
from memprof.cli import main
from memprof.errors import UsageError
from memprof.recording.allocations import CpuAllocatorTracker
from memprof.recording.attribution import StorageTracker
from memprof.recording.runner import make_optimizer, measure_step, run_step, targets_for, warm_up
from memprof.recording.threads import one_thread
from memprof.recording.timeline import activation_bytes
from memprof.reversible import AdditiveCoupling, ReversibleSequence
from memprof.vocabulary import Category

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads can be 10x slower."""
    with one_thread():
        yield


def _conv_bn(c: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())


def tiny_model() -> nn.Module:
    """A factory for the CLI tests (``tests.test_step:tiny_model``): conv, BN, in-place ReLU, pool, linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )


def tiny_reversible() -> nn.Module:
    """A reversible factory: stem conv, two additive couplings, pooled linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        ReversibleSequence([AdditiveCoupling(_conv_bn(4), _conv_bn(4)) for _ in range(2)]),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


def not_a_module() -> int:
    return 3


def _setup(factory, batch=4, optimizer="sgd"):
    model = factory().train()
    x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    opt = make_optimizer(optimizer, model.parameters())
    targets = warm_up(model, opt, x, targets_for(batch, torch.device("cpu"), 0))
    return model, opt, x, targets


@pytest.mark.parametrize("factory", [tiny_model, tiny_reversible])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_profiling_does_not_change_the_step(factory, optimizer):
    a, opt_a, x, t = _setup(factory, optimizer=optimizer)
    b = copy.deepcopy(a)
    opt_b = make_optimizer(optimizer, b.parameters())
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    loss_a = run_step(a, opt_a, x, t)
    grads_a = [p.grad.clone() for p in a.parameters()]
    rec = measure_step(b, opt_b, x, t, allocator=CpuAllocatorTracker())
    assert torch.equal(loss_a, rec.loss)
    for ga, pb in zip(grads_a, b.parameters()):
        assert torch.equal(ga, pb.grad)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    for ba, bb in zip(a.buffers(), b.buffers()):
        assert torch.equal(ba, bb)


def irevvgg_model() -> nn.Module:
    from memprof.models import get_model

    torch.manual_seed(0)
    return get_model("irevvgg")


@pytest.mark.parametrize("factory, size", [(tiny_reversible, 8), (irevvgg_model, 32)])
def test_profiling_does_not_change_allocator_peak(factory, size):
    """The hooks keep nothing alive: the allocator peak is the same with and without the tracker.

    (Multi-grad hooks did: in "any" mode they raised irevvgg's peak; NOTE [ Module backward boundaries ].)
    """
    model = factory().train()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    opt = make_optimizer("sgd", model.parameters())
    t = warm_up(model, opt, x, targets_for(2, torch.device("cpu"), 0))
    opt.zero_grad(set_to_none=True)
    alone = CpuAllocatorTracker()
    with alone.track():
        run_step(model, opt, x, t)
    opt.zero_grad(set_to_none=True)
    rec = measure_step(model, opt, x, t, allocator=CpuAllocatorTracker())
    assert rec.allocator.peak_increase == alone.result.peak_increase


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def _hook_count(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
    for p in model.parameters():
        n += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    return n


def test_hooks_removed_after_success_and_exception():
    model, opt, x, t = _setup(tiny_model)
    resize = torch.UntypedStorage.resize_
    before = _hook_count(model)
    measure_step(model, opt, x, t, allocator=CpuAllocatorTracker())
    assert _hook_count(model) == before == 0
    bad = nn.Sequential(model, _Boom())
    with pytest.raises(RuntimeError, match="boom"):
        measure_step(bad, opt, x, t, allocator=CpuAllocatorTracker())
    assert _hook_count(bad) == 0
    assert torch.UntypedStorage.resize_ is resize
    assert torch._C._len_torch_dispatch_stack() == 0
    # no saved-tensor hooks left: autograd saves the tensor itself again
    y = torch.randn(3, requires_grad=True)
    assert (y * y).grad_fn._saved_self is not None


def test_storage_resize_frees_are_seen():
    """A storage freed by resize_(0), as some reversible libraries do, leaves both trackers."""
    model = nn.Linear(2, 2)
    tracker = StorageTracker(model, None, [])
    alloc = CpuAllocatorTracker()
    with alloc.track(), tracker.track():
        start = tracker.live
        a = torch.empty(MiB // 4)  # 1 MiB
        a.untyped_storage().resize_(0)
        b = torch.empty(MiB // 4)
        del a, b
    assert tracker.peak - start == MiB
    assert alloc.result.peak_increase == MiB


def test_breakdown_adds_up_and_phases():
    prof = profile_step(tiny_reversible(), 4, (3, 8, 8))
    assert sum(prof.at_peak.values()) == prof.peak_bytes
    assert set(prof.at_peak) == {c.value for c in Category}
    assert prof.at_peak["unattributed"] >= 0  # (< 3% for registered models: test_estimate.py)
    assert prof.attributed_peak_bytes <= prof.peak_bytes
    assert max(r["peak_bytes"] for r in prof.phases.values()) == prof.peak_bytes
    tl = prof.timeline
    assert prof.activation_peak_bytes == int(activation_bytes(tl.by_category)[tl.phases[0][1]:].max())
    # the couplings' F and G run again inside backward: they have backward peaks
    rows = {r["name"]: r for r in prof.modules}
    assert rows["1.blocks.0.F"]["backward_peak_bytes"] is not None
    assert rows["1.blocks.0.F"]["calls"] == 1


def test_model_is_not_modified():
    model = tiny_model()
    state = copy.deepcopy(model.state_dict())
    profile_step(model, 2, (3, 8, 8), optimizer="adam")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert all(p.grad is None for p in model.parameters())


def test_reversible_saves_less_than_plain():
    rev = profile_step(tiny_reversible(), 8, (3, 8, 8))
    plain_model = tiny_reversible()
    plain_model[1].reversible = False
    plain = profile_step(plain_model, 8, (3, 8, 8))
    assert rev.at_peak["activations"] < plain.at_peak["activations"]
    assert rev.activation_peak_bytes < plain.activation_peak_bytes


def test_fit_finds_the_boundary():
    model = tiny_model()
    budget = profile_step(model, 37, (3, 8, 8), estimate=True).peak_bytes
    batch, prof = fit_batch_size(model, budget, (3, 8, 8))
    assert batch >= 37 and prof.peak_bytes <= budget
    assert profile_step(model, batch + 1, (3, 8, 8), estimate=True).peak_bytes > budget
    with pytest.raises(UsageError, match="even batch 1 needs"):
        fit_batch_size(model, 1000, (3, 8, 8))


def test_cli_profile_json_keys(capsys):
    assert main(["profile", "tests.test_step:tiny_model", "--input-shape", "3,8,8", "--batch-size", "2",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("model", "batch_size", "device", "mode", "peak_bytes", "activation_peak_bytes",
                "at_peak", "modules", "step_time_s"):
        assert key in out
    assert set(out["at_peak"]) == {"parameters", "gradients", "optimizer_state", "activations",
                                   "temporaries", "inputs", "unattributed"}
    assert out["mode"] == "measured" and out["step_time_s"] > 0
    assert {"forward_peak_bytes", "backward_peak_bytes"} <= set(out["modules"][0])


def test_cli_profile_text_markdown_timeline(tmp_path, capsys):
    png = tmp_path / "t.png"
    assert main(["profile", "tests.test_step:tiny_model", "--input-shape", "3,8,8", "--batch-size", "2",
                 "--estimate", "--format", "markdown", "--timeline", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| parameters" in out and png.stat().st_size > 0
    assert main(["fit", "tests.test_step:tiny_model", "--input-shape", "3,8,8", "--memory", "64MiB"]) == 0
    assert "fits in" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["profile", "no_such_module_xyz:make", "--input-shape", "3,8,8"], "cannot load model"),
        (["profile", "tests.test_step:not_a_module", "--input-shape", "3,8,8"], "not an nn.Module"),
        (["profile", "tests.test_step:tiny_model", "--input-shape", "3,12,12", "--estimate"], "rejects an input of shape"),
        (["profile", "tests.test_step:tiny_model", "--input-shape", "3,12,12"], "rejects an input of shape"),
        (["fit", "tests.test_step:tiny_model", "--input-shape", "3,8,8", "--memory", "lots"], "cannot parse memory size"),
        (["profile", "tests.test_step:tiny_model", "--input-shape", "3,8,8", "--optimizer", "lion"], "unknown optimizer"),
        (["profile", "tests.test_step:tiny_model", "--input-shape", "3,8,8", "--batch-size", "0"], "batch size"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


@pytest.mark.parametrize("memory", ["16GiB", "16GB", "17179869184"])
def test_fit_budget_spellings(memory, capsys):
    assert main(["fit", "tests.test_step:tiny_model", "--input-shape", "3,8,8", "--memory", memory,
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["memory_bytes"] == {"16GiB": 16 << 30, "16GB": 16 * 10**9, "17179869184": 16 << 30}[memory]


def test_cli_subprocess_no_traceback():
    r = subprocess.run([sys.executable, "-m", "memprof", "fit", "vgg19", "--memory", "16 parsecs"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_conv_backward_scratch_is_measured_at_the_allocator():
    from memprof.recording.allocations import conv_backward_scratch

    m = conv_backward_scratch(8, 8, 8, 4)
    assert m.input_bytes == 4 * 8 * 8 * 8 * 4
    assert m.tensor_bytes == m.input_bytes + 8 * 8 * 9 * 4  # input gradient + weight gradient
    assert m.peak_bytes >= m.tensor_bytes
    assert m.scratch_bytes == m.peak_bytes - m.tensor_bytes >= 0
