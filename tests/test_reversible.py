"""The reversible engine: exact gradients, exact inverses, BatchNorm/RNG/autocast state, memory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from memprof.reversible import (
    AdditiveCoupling,
    ChannelZeroPad,
    Invertible1x1Conv,
    InvertibleDownsample,
    ReversibleSequence,
    set_reversible,
)
from tests.helpers import rel_err, saved_bytes


def conv_bn_relu(c: int, layers: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """conv3x3 + BatchNorm + ReLU, ``layers`` times (the F and G of the issue)."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        if dropout:
            mods.append(nn.Dropout(dropout))
    return nn.Sequential(*mods)


def make_seq(n: int, c: int = 8, dropout: float = 0.0, **kw) -> ReversibleSequence:
    half = c // 2
    return ReversibleSequence(
        [AdditiveCoupling(conv_bn_relu(half, dropout=dropout), conv_bn_relu(half, dropout=dropout)) for _ in range(n)],
        **kw,
    )


def twins(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The model in reversible mode and a deep copy in plain-autograd mode."""
    set_reversible(model, True)
    plain = set_reversible(copy.deepcopy(model), False)
    return model, plain


def run_step(model: nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of a fixed loss; returns (output, input grad)."""
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    y = model(x)
    (y.square().mean() + y.sum()).backward()
    return y.detach(), x.grad


def assert_twins_agree(rev: nn.Module, plain: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One step of each twin: equal outputs, input and parameter gradients within 1e-5."""
    y_r, g_r = run_step(rev, x)
    y_p, g_p = run_step(plain, x)
    assert torch.equal(y_r, y_p)
    assert rel_err(g_r, g_p) <= 1e-5
    assert_same_grads(rev, plain)
    return y_r


def assert_same_grads(a: nn.Module, b: nn.Module, tol: float = 1e-5) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert pa.grad is not None and pb.grad is not None, name
        assert rel_err(pa.grad, pb.grad) <= tol, (name, rel_err(pa.grad, pb.grad))


# --- gradients -----------------------------------------------------------------------------


def flat_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("depth", [1, 4, 16])
@pytest.mark.parametrize("seed", range(8))
def test_gradients_equal_plain_backprop(depth: int, seed: int) -> None:
    """float32: max|a-b| / max|b| <= 1e-5 for the input gradient and the parameter gradient.

    The parameter gradient is taken as one vector: a single BatchNorm weight's gradient is a sum
    with cancellation whose own float32 rounding error is about 1e-5 of its size (see
    test_gradient_error_is_float32_rounding), so per tensor the float32 bound is the next test's.
    """
    torch.manual_seed(seed)
    rev, plain = twins(make_seq(depth))
    x = torch.randn(4, 8, 6, 6)
    y_r, gx_r = run_step(rev, x)
    y_p, gx_p = run_step(plain, x)
    assert torch.equal(y_r, y_p)  # same forward code, same numbers
    assert rel_err(gx_r, gx_p) <= 1e-5
    assert rel_err(flat_grads(rev), flat_grads(plain)) <= 1e-5


@pytest.mark.parametrize("depth", [4, 16])
@pytest.mark.parametrize("seed", range(8))
def test_gradients_equal_plain_backprop_float64_per_tensor(depth: int, seed: int) -> None:
    """In float64 the algorithm is exact to rounding: every tensor within 1e-9."""
    torch.manual_seed(seed)
    rev, plain = twins(make_seq(depth).double())
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    _, gx_r = run_step(rev, x)
    _, gx_p = run_step(plain, x)
    assert rel_err(gx_r, gx_p) <= 1e-9
    assert_same_grads(rev, plain, tol=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_gradient_error_is_float32_rounding(seed: int) -> None:
    """Per tensor, the reversible float32 gradients are as close to float64 as plain float32's."""
    torch.manual_seed(seed)
    ref = make_seq(16)
    rev, plain = twins(copy.deepcopy(ref))
    exact = set_reversible(copy.deepcopy(ref).double(), False)
    x = torch.randn(4, 8, 6, 6)
    run_step(rev, x), run_step(plain, x), run_step(exact, x.double())
    trios = list(zip(rev.parameters(), plain.parameters(), exact.parameters()))
    err_rev = max(rel_err(r.grad.double(), e.grad) for r, _, e in trios)
    err_plain = max(rel_err(p.grad.double(), e.grad) for _, p, e in trios)
    assert err_rev <= 2 * err_plain + 1e-6, (err_rev, err_plain)
    assert err_rev <= 1e-4


def test_gradcheck_float64_inputs_and_parameters() -> None:
    torch.manual_seed(0)
    seq = ReversibleSequence(
        [
            AdditiveCoupling(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh()), nn.Conv2d(2, 2, 1)),
            InvertibleDownsample(2),
            AdditiveCoupling(None, nn.Sequential(nn.Conv2d(8, 8, 1), nn.Tanh())),
            ChannelZeroPad(2),
            AdditiveCoupling(nn.Conv2d(9, 9, 1), nn.Conv2d(9, 9, 1)),
        ]
    ).double()
    names = [n for n, _ in seq.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in seq.parameters())
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(seq, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


def test_input_without_grad_still_trains_parameters() -> None:
    torch.manual_seed(1)
    rev, plain = twins(make_seq(3))
    x = torch.randn(2, 8, 5, 5)
    for m in (rev, plain):
        m(x).sum().backward()
    assert_same_grads(rev, plain)


def test_eval_mode_gradients_equal() -> None:
    torch.manual_seed(2)
    rev, plain = twins(make_seq(4))
    rev.eval(), plain.eval()
    x = torch.randn(3, 8, 4, 4)
    _, gr = run_step(rev, x)
    _, gp = run_step(plain, x)
    assert rel_err(gr, gp) <= 1e-5
    assert_same_grads(rev, plain)


def test_no_grad_is_a_plain_forward() -> None:
    rev, plain = twins(make_seq(4))
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with torch.no_grad():
        y = rev(x)
    assert y.grad_fn is None and not y.requires_grad
    with torch.no_grad():
        assert torch.equal(y, plain(x))


def test_shared_parameters_get_summed_gradients() -> None:
    torch.manual_seed(3)
    f, g = conv_bn_relu(4, layers=1), conv_bn_relu(4, layers=1)
    rev, plain = twins(ReversibleSequence([AdditiveCoupling(f, g), AdditiveCoupling(f, g)]))
    x = torch.randn(2, 8, 4, 4)
    run_step(rev, x), run_step(plain, x)
    assert_same_grads(rev, plain)


def test_nested_sequences_equal_plain_and_save_only_the_outer_output() -> None:
    torch.manual_seed(4)
    inner = [make_seq(2, c=8), InvertibleDownsample(2), make_seq(2, c=32)]
    model = ReversibleSequence([ChannelZeroPad(4, halves=True), *inner])
    rev, plain = twins(model)
    x = torch.randn(2, 4, 8, 8)
    y_r = assert_twins_agree(rev, plain, x)
    held = saved_bytes(lambda: rev(x.requires_grad_()), rev.parameters())
    assert held == y_r.numel() * 4  # only the outermost output


def test_autograd_grad_sees_reversible_parameters() -> None:
    torch.manual_seed(5)
    rev, plain = twins(make_seq(2))
    x = torch.randn(2, 8, 4, 4)
    ga = torch.autograd.grad(rev(x).sum(), list(rev.parameters()))
    gb = torch.autograd.grad(plain(x).sum(), list(plain.parameters()))
    for a, b in zip(ga, gb):
        assert rel_err(a, b) <= 1e-5


# --- state that recomputation must respect ---------------------------------------------------


def test_batchnorm_statistics_match_after_five_steps() -> None:
    """Five forward+backward steps: running statistics bit-identical to the plain twin's.

    (A plain network would fold each batch in once; a recomputation that updated the running
    statistics again would fold it in twice and count 10 batches.)
    """
    torch.manual_seed(6)
    rev, plain = twins(make_seq(4))
    for step in range(5):
        x = torch.randn(4, 8, 5, 5)
        for m in (rev, plain):
            run_step(m, x, seed=step)
    buffers_r, buffers_p = dict(rev.named_buffers()), dict(plain.named_buffers())
    assert buffers_r.keys() == buffers_p.keys() and buffers_r
    for name, b in buffers_r.items():
        assert torch.equal(b, buffers_p[name]), name
    assert all(int(v) == 5 for k, v in buffers_r.items() if k.endswith("num_batches_tracked"))


def test_batchnorm_statistics_match_after_five_sgd_steps() -> None:
    """With weight updates the twins' weights differ by float32 rounding, so do the statistics."""
    torch.manual_seed(6)
    rev, plain = twins(make_seq(4))
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (rev, plain)]
    for step in range(5):
        x = torch.randn(4, 8, 5, 5)
        for m, opt in zip((rev, plain), opts):
            opt.zero_grad()
            run_step(m, x, seed=step)
            opt.step()
    buffers_p = dict(plain.named_buffers())
    for name, b in rev.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert int(b) == int(buffers_p[name]) == 5
        else:
            assert rel_err(b, buffers_p[name]) <= 1e-4, name  # rounding, amplified by 5 steps


def test_dropout_gradients_equal_plain_and_rng_stream_untouched() -> None:
    torch.manual_seed(7)
    rev, plain = twins(make_seq(3, dropout=0.3))
    x = torch.randn(4, 8, 5, 5)
    y_r, g_r = run_step(rev, x, seed=11)
    after_r = torch.rand(3)
    y_p, g_p = run_step(plain, x, seed=11)
    after_p = torch.rand(3)
    assert torch.equal(y_r, y_p)
    assert rel_err(g_r, g_p) <= 1e-5
    assert_same_grads(rev, plain)
    # backward restored the generator: the user's random stream continues as without memprof
    assert torch.equal(after_r, after_p)


def test_deterministic_blocks_keep_no_rng_state() -> None:
    seq = make_seq(8)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    tapes = []
    for model in (seq, make_seq(2, dropout=0.5)):
        node = model(x).grad_fn
        total = 0
        while node is not None and type(node).__name__ == "_ReversibleBlockFunctionBackward":
            total += node.tape.nbytes()
            node = node.next_functions[0][0]
        tapes.append(total)
    assert tapes[0] == 0 and tapes[1] > 0


def test_autocast_bfloat16_is_replayed_in_recomputation() -> None:
    torch.manual_seed(8)
    rev, plain = twins(make_seq(4))
    dtypes: list[torch.dtype] = []
    conv = rev.blocks[0].F[0]
    handle = conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    x = torch.randn(4, 8, 6, 6)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_r, g_r = run_step(rev, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_p, g_p = run_step(plain, x)
    finally:
        handle.remove()
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # forward, then the recomputation in backward
    assert torch.equal(y_r, y_p)
    assert rel_err(g_r, g_p) <= 2e-2  # bf16 rounding of the rebuilt inputs
    for (n, a), (_, b) in zip(rev.named_parameters(), plain.named_parameters()):
        assert rel_err(a.grad, b.grad) <= 5e-2, n


# --- inverses -----------------------------------------------------------------------------


def test_inverse_of_forward_sixteen_blocks() -> None:
    torch.manual_seed(9)
    seq = make_seq(16).eval()
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        back = seq.inverse(seq(x))
    assert ((back - x).norm() / x.norm()).item() <= 1e-6


def test_coupling_forms() -> None:
    torch.manual_seed(10)
    f, g = nn.Linear(3, 3), nn.Linear(3, 3)
    x = torch.randn(5, 6)
    with torch.no_grad():
        y = AdditiveCoupling(f, g)(x)
        x1, x2 = x[:, :3], x[:, 3:]
        y1 = x1 + f(x2)
        assert torch.allclose(y, torch.cat([y1, x2 + g(y1)], 1))
        nice = AdditiveCoupling(None, g)(x)  # the deck's NICE coupling: y1 = x1, y2 = x2 + m(x1)
        assert torch.equal(nice[:, :3], x1) and torch.allclose(nice[:, 3:], x2 + g(x1))
        c = AdditiveCoupling(f, None, split_dim=0)
        x0 = torch.randn(4, 3)
        assert torch.allclose(c.inverse(c(x0)), x0, atol=1e-6)


def test_invertible_downsample_is_a_lossless_permutation() -> None:
    x = torch.randn(2, 3, 8, 6)
    d = InvertibleDownsample(2)
    y = d(x)
    assert y.shape == (2, 12, 4, 3)
    assert torch.equal(d.inverse(y), x)
    assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)
    pad = ChannelZeroPad(5)
    assert pad(x).shape == (2, 8, 8, 6) and torch.equal(pad.inverse(pad(x)), x)
    even = torch.randn(2, 4, 3, 3)
    halves = ChannelZeroPad(6, halves=True)
    padded = halves(even)
    assert padded.shape == (2, 10, 3, 3) and torch.equal(halves.inverse(padded), even)
    assert torch.equal(padded[:, 2:5], torch.zeros(2, 3, 3, 3)) and torch.equal(padded[:, 5:7], even[:, 2:])
    conv = Invertible1x1Conv(3)
    with torch.no_grad():
        assert torch.allclose(conv.inverse(conv(x)), x, atol=1e-5)


def test_fully_invertible_stack_equals_plain() -> None:
    torch.manual_seed(11)
    model = ReversibleSequence(
        [
            ChannelZeroPad(1),
            InvertibleDownsample(2),
            Invertible1x1Conv(16),  # mixes the zero channels into both halves
            make_seq(2, c=16),
            Invertible1x1Conv(16),
            InvertibleDownsample(2),
            make_seq(2, c=64),
        ]
    )
    rev, plain = twins(model)
    x = torch.randn(2, 3, 8, 8)
    assert_twins_agree(rev, plain, x)


def test_state_dicts_identical_and_flag_toggles() -> None:
    seq = make_seq(3)
    keys = {k: v.shape for k, v in seq.state_dict().items()}
    seq.reversible = False
    assert {k: v.shape for k, v in seq.state_dict().items()} == keys
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    assert seq(x).grad_fn.__class__.__name__ != "_ReversibleBlockFunctionBackward"
    seq.reversible = True
    assert seq(x).grad_fn.__class__.__name__ == "_ReversibleBlockFunctionBackward"


# --- failure modes ------------------------------------------------------------------------


def test_backward_twice_is_a_clear_error() -> None:
    seq = make_seq(2)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    loss = seq(x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_backward_twice_with_retain_graph_gives_the_same_gradients() -> None:
    torch.manual_seed(12)
    rev, plain = twins(make_seq(2))
    x = torch.randn(2, 8, 4, 4)
    for m in (rev, plain):
        loss = m(x).square().sum()
        loss.backward(retain_graph=True)
        loss.backward()
    assert_same_grads(rev, plain)


def test_parameters_changed_before_backward_is_an_error() -> None:
    seq = make_seq(2)
    loss = seq(torch.randn(2, 8, 4, 4)).sum()
    with torch.no_grad():
        next(seq.parameters()).add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_odd_split_names_block_and_shape() -> None:
    seq = make_seq(2, c=8)
    with pytest.raises(ValueError, match=r"block 0 .*\(2, 7, 4, 4\).*odd"):
        seq(torch.randn(2, 7, 4, 4, requires_grad=True))


def test_wrong_f_shape_names_block_and_shapes() -> None:
    bad = AdditiveCoupling(nn.Conv2d(4, 3, 1), nn.Conv2d(4, 4, 1))
    seq = ReversibleSequence([AdditiveCoupling(nn.Conv2d(4, 4, 1), None), bad])
    with pytest.raises(ValueError, match=r"block 1 \(AdditiveCoupling\).*\(2, 4, 5, 5\).*\(2, 3, 5, 5\)"):
        seq(torch.randn(2, 8, 5, 5, requires_grad=True))


def test_non_invertible_block_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"block 1 \(Conv2d\) is not invertible"):
        ReversibleSequence([InvertibleDownsample(2), nn.Conv2d(4, 4, 1)])


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="F or G"):
        AdditiveCoupling(None, None)
    with pytest.raises(ValueError, match="factor"):
        InvertibleDownsample(1)
    with pytest.raises(ValueError, match=r"divisible by 2; got shape \(1, 3, 5, 4\)"):
        InvertibleDownsample(2)(torch.randn(1, 3, 5, 4))
    with pytest.raises(ValueError, match="pad"):
        ChannelZeroPad(0)


# --- memory ---------------------------------------------------------------------------------


def held_after_forward(model: nn.Module, x: torch.Tensor) -> int:
    return saved_bytes(lambda: model(x), model.parameters())


def test_memory_does_not_grow_with_depth() -> None:
    torch.manual_seed(13)
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    held = {n: held_after_forward(make_seq(n, c=16), x) for n in (2, 16)}
    plain16 = held_after_forward(make_seq(16, c=16, reversible=False), x)
    assert held[16] <= held[2] * 1.01
    assert held[16] <= plain16 / 8
    assert held[2] > 0  # the saved output is really counted: the comparison can fail


def test_torch_compile_runs_and_matches_eager() -> None:
    """torch.compile works: dynamo breaks the graph around each reversible node and runs it eagerly."""
    torch.manual_seed(14)
    rev, plain = twins(make_seq(2, c=4))
    compiled = torch.compile(rev)
    x = torch.randn(2, 4, 4, 4)
    y_c, g_c = run_step(compiled, x)
    y_p, g_p = run_step(plain, x)
    assert rel_err(y_c, y_p) <= 1e-6
    assert rel_err(g_c, g_p) <= 1e-5
    assert rel_err(flat_grads(rev), flat_grads(plain)) <= 1e-5


def test_autocast_keeps_the_additive_stream_in_float32() -> None:
    """A bfloat16 input under autocast is added in float32, so the inverse undoes the forward."""
    torch.manual_seed(15)
    seq = make_seq(16).eval()
    x = torch.randn(2, 8, 6, 6).to(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = seq(x)
        back = seq.inverse(y)
    assert y.dtype == torch.float32
    assert ((back - x.float()).norm() / x.float().norm()).item() <= 1e-2


# --- rebuilding in the output's own memory ---------------------------------------------------
# NOTE [ The last block's output, and when backward may overwrite it ] in sequence.py.


def owned_decisions(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record every ownership decision the last node of a chain makes."""
    from memprof.reversible import sequence

    seen: list[bool] = []
    real = sequence._sole_holder

    def spy(y: torch.Tensor) -> bool:
        seen.append(real(y))
        return seen[-1]

    monkeypatch.setattr(sequence, "_sole_holder", spy)
    return seen


def test_output_nobody_holds_is_rebuilt_in_place_with_exact_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss reads the output through an op that saves nothing of it: x is rebuilt in y's memory."""
    seen = owned_decisions(monkeypatch)
    torch.manual_seed(16)
    rev, plain = twins(make_seq(4))
    x = torch.randn(2, 8, 6, 6)
    w = torch.randn(8, 6, 6)
    grads = []
    for m in (rev, plain):
        xi = x.clone().requires_grad_(True)
        (m(xi) * w).sum().backward()  # mul by a constant saves w, not the output
        grads.append(xi.grad)
    assert seen == [True]
    assert rel_err(grads[0], grads[1]) <= 1e-5
    assert_same_grads(rev, plain)


def test_output_held_elsewhere_is_never_overwritten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held by the user or through a detached alias: backward leaves the output intact."""
    seen = owned_decisions(monkeypatch)
    torch.manual_seed(17)
    seq = make_seq(2)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    w = torch.randn(8, 4, 4)

    out = seq(x)  # the user keeps the output
    before = out.detach().clone()
    (out * w).sum().backward()
    assert seen == [False] and torch.equal(out.detach(), before)

    out = seq(x)
    snap = out.detach()  # only an alias on the same memory survives
    snap_before = snap.clone()
    loss = (out * w).sum()
    del out
    loss.backward()
    assert seen == [False, False] and torch.equal(snap, snap_before)

    loss = (seq(x) * w).sum()  # nothing else holds it: rebuilt in place, except while the graph is kept
    loss.backward(retain_graph=True)
    loss.backward()
    assert seen == [False, False, True]


def test_ownership_is_the_same_with_and_without_saved_tensor_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision must not depend on memprof's hooks: a profile would otherwise show other memory."""
    from memprof.recording.attribution import StorageTracker

    seen = owned_decisions(monkeypatch)
    torch.manual_seed(18)
    seq = make_seq(2)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    w = torch.randn(8, 4, 4)

    def step() -> None:
        out = seq(x)
        loss = (out * w).sum()
        held = out if len(seen) % 2 else None  # every other run the user keeps the output
        del out
        loss.backward()
        del held

    for _ in range(4):
        step()
    plain, seen[:] = list(seen), []
    tracker = StorageTracker(seq, None, [x])
    with tracker.track():
        for _ in range(4):
            step()
    hooked = list(seen)
    seen.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        for _ in range(4):
            step()
    assert plain == hooked == seen == [True, False, True, False]


def test_save_on_cpu_hooks_apply_to_the_kept_output() -> None:
    torch.manual_seed(19)
    rev, plain = twins(make_seq(2))
    x = torch.randn(2, 8, 4, 4)
    with torch.autograd.graph.save_on_cpu():
        y_r, g_r = run_step(rev, x)
    y_p, g_p = run_step(plain, x)
    assert torch.equal(y_r, y_p) and rel_err(g_r, g_p) <= 1e-5
    assert_same_grads(rev, plain)


def test_output_modified_in_place_before_backward_is_an_error() -> None:
    seq = make_seq(2)
    out = seq(torch.randn(2, 8, 4, 4, requires_grad=True))
    loss = out.sum()
    with torch.no_grad():
        out.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place after the forward"):
        loss.backward()


def test_rebuilding_in_place_saves_one_output_of_memory() -> None:
    """Allocator peak of the backward: one output-sized tensor less when nobody holds the output."""
    from memprof.recording.allocations import CpuAllocatorTracker

    torch.manual_seed(20)
    seq = make_seq(2, c=64)
    x = torch.randn(8, 64, 16, 16, requires_grad=True)
    w = torch.randn(64, 16, 16)
    peaks = {}
    for held in (False, True):
        out = seq(x)
        loss = (out * w).sum()
        keep = out if held else None
        del out
        tracker = CpuAllocatorTracker()
        with tracker.track():
            loss.backward()
        peaks[held] = tracker.result.peak_increase
        del keep
        x.grad = None
        seq.zero_grad(set_to_none=True)
    assert peaks[True] - peaks[False] == x.numel() * 4


def test_branches_that_pass_the_gradient_straight_through() -> None:
    """Identity branches hand autograd's incoming gradient back unchanged: it must not be reused."""
    torch.manual_seed(21)
    for F, G in [(nn.Identity(), conv_bn_relu(4)), (conv_bn_relu(4), nn.Identity()), (nn.Identity(), nn.Identity())]:
        rev, plain = twins(ReversibleSequence([AdditiveCoupling(F, G), AdditiveCoupling(conv_bn_relu(4), None)]))
        x = torch.randn(2, 8, 5, 5)
        w = torch.randn(8, 5, 5)
        grads = []
        for m in (rev, plain):
            xi = x.clone().requires_grad_(True)
            (m(xi) * w).sum().backward()
            grads.append(xi.grad)
        assert rel_err(grads[0], grads[1]) <= 1e-5
        assert_same_grads(rev, plain)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_inside_torch_utils_checkpoint(use_reentrant: bool) -> None:
    """Checkpointing a reversible sequence: its saved output goes through checkpoint's hooks."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(22)
    rev, plain = twins(make_seq(2))
    x = torch.randn(2, 8, 4, 4)
    w = torch.randn(8, 4, 4)
    grads = []
    for m in (rev, plain):
        xi = x.clone().requires_grad_(True)
        (checkpoint(m, xi, use_reentrant=use_reentrant) * w).sum().backward()
        grads.append(xi.grad)
    assert rel_err(grads[0], grads[1]) <= 1e-5
    assert_same_grads(rev, plain)
