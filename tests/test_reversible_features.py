"""Issue 11: what memcnn and revlib offer, in memprof's engine.

Several tensors in and out, conditioning, the affine coupling, the inverse direction under
autograd, check_invertible, compact RNG state. Each feature is compared with the
``reversible=False`` twin (same weights, same inputs).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from memprof.reversible import (
    AdditiveCoupling,
    AffineCoupling,
    ChannelZeroPad,
    Invertible1x1Conv,
    InvertibleDownsample,
    InvertibleModule,
    ReversibleSequence,
    check_invertible,
    set_reversible,
)
from tests.helpers import rel_err, saved_bytes
from tests.test_reversible_exactness import (
    Conditioned,
    assert_buffers_equal,
    assert_grads_equal,
    plain_twin,
)


def conv_tanh(c: int, out: int | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, out or c, 3, padding=1), nn.BatchNorm2d(out or c), nn.Tanh())


def step_grads(model: nn.Module, inputs: tuple[torch.Tensor, ...], loss_of=None) -> list[torch.Tensor]:
    """One forward+backward; returns the input gradients."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = model(tuple(leaves)) if len(leaves) > 1 else model(leaves[0])
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o.square().sum() + o.sum()) for o in _flat(outs))
    loss.backward()
    return [t.grad for t in leaves]


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for part in x for t in _flat(part)]


# --- several tensors in and out -----------------------------------------------------------------


class Mix(nn.Module):
    """Maps a pair of tensors (B, a, H, W), (B, b, H, W) to a pair of the other half's shapes."""

    def __init__(self, cin: tuple[int, int], cout: tuple[int, int]) -> None:
        super().__init__()
        self.a = nn.Conv2d(sum(cin), cout[0], 3, padding=1)
        self.b = nn.Conv2d(sum(cin), cout[1], 1)

    def forward(self, h: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat(h, 1)
        return torch.tanh(self.a(z)), torch.sigmoid(self.b(z))


@pytest.mark.parametrize("coupling", [AdditiveCoupling, AffineCoupling])
def test_two_streams_equal_plain_and_save_only_the_output(coupling) -> None:
    """A reversible transformer's layout: (x1, x2) streams, F and G on whole streams."""
    torch.manual_seed(0)
    c = 3

    def branch() -> nn.Module:
        return nn.Sequential(nn.Linear(c, 8), nn.GELU(), nn.Linear(8, 2 * c if coupling is AffineCoupling else c))

    rev = ReversibleSequence([coupling(branch(), branch(), split_dim=-1) for _ in range(4)]).double()
    plain = plain_twin(rev)
    x1, x2 = torch.randn(2, 5, c, dtype=torch.float64), torch.randn(2, 5, c, dtype=torch.float64)
    with torch.no_grad():
        y_plain = plain((x1, x2))
        assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(rev.inverse(y_plain), (x1, x2)))
    g_rev = step_grads(rev, (x1, x2))
    g_plain = step_grads(plain, (x1, x2))
    for a, b in zip(g_rev, g_plain):
        assert rel_err(a, b) <= 1e-9
    assert_grads_equal(rev, plain, tol=1e-9)
    xs = (x1.clone().requires_grad_(), x2.clone().requires_grad_())
    held = saved_bytes(lambda: rev(xs), rev.parameters())
    assert held == 2 * x1.numel() * 8  # the two output streams, nothing per block
    assert saved_bytes(lambda: plain(xs), plain.parameters()) > 4 * held


def test_halves_that_are_tuples_of_tensors() -> None:
    """memcnn's multi-tensor couplings: each half is itself a tuple of tensors."""
    torch.manual_seed(1)
    x1 = (torch.randn(2, 2, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64))
    x2 = (torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 2, 4, 4, dtype=torch.float64))
    blocks = [AdditiveCoupling(Mix((3, 2), (2, 1)), Mix((2, 1), (3, 2))) for _ in range(3)]
    rev = ReversibleSequence(blocks).double()
    plain = plain_twin(rev)
    leaves = [*x1, *x2]

    def run(m: nn.Module) -> list[torch.Tensor]:
        ls = [t.clone().requires_grad_() for t in leaves]
        out = m(((ls[0], ls[1]), (ls[2], ls[3])))
        sum(o.square().sum() for o in _flat(out)).backward()
        return [t.grad for t in ls]

    for a, b in zip(run(rev), run(plain)):
        assert rel_err(a, b) <= 1e-9
    assert_grads_equal(rev, plain, tol=1e-9)
    with torch.no_grad():
        back = rev.inverse(rev((x1, x2)))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(_flat(back), leaves))


def test_stream_errors_name_the_block() -> None:
    seq = ReversibleSequence([AdditiveCoupling(nn.Linear(2, 2), None), InvertibleDownsample(2)])
    with pytest.raises(ValueError, match=r"block 1 \(InvertibleDownsample\).*one tensor"):
        seq((torch.randn(1, 2, requires_grad=True), torch.randn(1, 2)))
    with pytest.raises(ValueError, match=r"block 0 .*pair of halves.*tuple of 3"):
        seq((torch.randn(1, 2, requires_grad=True),) * 3)


# --- conditioning -----------------------------------------------------------------------------


def test_conditioning_reaches_nested_sequences_and_passes_by_downsampling() -> None:
    torch.manual_seed(2)
    inner = ReversibleSequence([AdditiveCoupling(Conditioned(8, 3), Conditioned(8, 3))])
    seq = ReversibleSequence(
        [AdditiveCoupling(Conditioned(2, 3), Conditioned(2, 3)), InvertibleDownsample(2), inner]
    ).double()
    rev, plain = seq, plain_twin(seq)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    c = torch.randn(2, 3, dtype=torch.float64)
    grads = []
    for m in (rev, plain):
        ci = c.clone().requires_grad_()
        xi = x.clone().requires_grad_()
        m(xi, ci).square().sum().backward()
        grads.append((xi.grad, ci.grad))
    assert rel_err(grads[0][0], grads[1][0]) <= 1e-9
    assert rel_err(grads[0][1], grads[1][1]) <= 1e-9
    assert_grads_equal(rev, plain, tol=1e-9)


def test_conditioning_without_grad_and_frozen_parameters() -> None:
    """Only the conditioning requires grad: the reversible path still runs and feeds it."""
    torch.manual_seed(3)
    seq = ReversibleSequence([AdditiveCoupling(Conditioned(2, 3), Conditioned(2, 3)) for _ in range(2)]).double()
    seq.requires_grad_(False)
    rev, plain = seq, plain_twin(seq)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    c = torch.randn(2, 3, dtype=torch.float64)
    got = []
    for m in (rev, plain):
        ci = c.clone().requires_grad_()
        y = m(x, ci)
        got.append(type(y.grad_fn).__name__)
        y.sum().backward()
        got.append(ci.grad)
    assert got[0].startswith("_Reversible")
    assert rel_err(got[1], got[3]) <= 1e-9


def test_conditioning_modified_in_place_before_backward_is_an_error() -> None:
    seq = ReversibleSequence([AdditiveCoupling(Conditioned(2, 3), None)])
    c = torch.randn(2, 3)
    loss = seq(torch.randn(2, 4, 4, 4, requires_grad=True), c).sum()
    c.add_(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


# --- the affine coupling ---------------------------------------------------------------------------


def affine_seq(n: int, c: int = 4, **kw) -> ReversibleSequence:
    half = c // 2
    return ReversibleSequence(
        [AffineCoupling(conv_tanh(half, 2 * half), conv_tanh(half, 2 * half), **kw) for _ in range(n)]
    )


def test_affine_coupling_equals_plain_float64_and_forward_bitwise() -> None:
    torch.manual_seed(4)
    rev = affine_seq(4).double()
    plain = plain_twin(rev)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(rev(x), plain(x))  # no-grad forward writes the same floats
    (gr,), (gp,) = step_grads(rev, (x,)), step_grads(plain, (x,))
    assert rel_err(gr, gp) <= 1e-9
    assert_grads_equal(rev, plain, tol=1e-9)
    assert_buffers_equal(rev, plain)


def test_affine_coupling_forms_and_inverse() -> None:
    torch.manual_seed(5)
    g = nn.Linear(3, 6)
    nvp = AffineCoupling(None, g)  # Real NVP: y1 = x1, y2 = x2 * scale(x1) + t(x1)
    x = torch.randn(4, 6)
    with torch.no_grad():
        y = nvp(x)
        s, t = g(x[:, :3]).chunk(2, 1)
        scale = torch.exp(2.0 * torch.tanh(s / 2.0))
        assert torch.equal(y[:, :3], x[:, :3])
        assert torch.allclose(y[:, 3:], x[:, 3:] * scale + t)
        assert torch.allclose(nvp.inverse(y), x, atol=1e-6)
    # a per-channel (B, C, 1, 1) scale from a pair-returning branch, with a huge raw log-scale
    class PerChannel(nn.Module):
        def forward(self, h):
            return 1e6 * h.mean((2, 3), keepdim=True), h.mean((2, 3), keepdim=True)

    coupling = AffineCoupling(PerChannel(), PerChannel(), clamp=1.5)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        y = coupling(x)
        assert torch.allclose(coupling.inverse(y), x, atol=1e-10)
    with pytest.raises(ValueError, match="twice the half's size"):
        AffineCoupling(nn.Conv2d(2, 2, 1), None)(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="clamp"):
        AffineCoupling(nn.Conv2d(2, 4, 1), None, clamp=0)


def test_affine_gradcheck_with_conditioning() -> None:
    torch.manual_seed(6)

    class CondAffine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, h, c):
            return torch.tanh(self.lin(torch.cat([h, c], 1)))  # (B, 4): s and t of a 2-wide half

    seq = ReversibleSequence([AffineCoupling(CondAffine(), CondAffine()) for _ in range(2)]).double()
    names = [n for n, _ in seq.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in seq.parameters())
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)

    def fn(x, c, *ps):
        return torch.func.functional_call(seq, dict(zip(names, ps)), (x, c))

    assert torch.autograd.gradcheck(fn, (x, c, *params), eps=1e-6, atol=1e-6)


def test_affine_memory_flat_in_depth() -> None:
    torch.manual_seed(7)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    held = {}
    for n in (2, 8):
        seq = affine_seq(n, c=8)
        held[n] = saved_bytes(lambda seq=seq: seq(x), seq.parameters())
    plain = set_reversible(affine_seq(8, c=8), False)
    plain8 = saved_bytes(lambda: plain(x), plain.parameters())
    assert held[8] == held[2] == x.numel() * 4
    assert plain8 > 8 * held[8]


# --- the inverse direction under autograd -----------------------------------------------------------


def inverse_model() -> ReversibleSequence:
    torch.manual_seed(8)
    return ReversibleSequence(
        [
            AdditiveCoupling(conv_tanh(2), conv_tanh(2)),
            AffineCoupling(conv_tanh(2, 4), None),
            InvertibleDownsample(2),
            Invertible1x1Conv(16),
            AdditiveCoupling(conv_tanh(8), conv_tanh(8)),
        ]
    ).double()


def test_inverse_under_autograd_equals_plain_and_keeps_only_its_output() -> None:
    rev = inverse_model()
    plain = plain_twin(rev)
    y = torch.randn(2, 16, 2, 2, dtype=torch.float64)
    grads = []
    for m in (rev, plain):
        yi = y.clone().requires_grad_()
        x = m.inverse(yi)
        assert x.shape == (2, 4, 4, 4)
        (x.square().sum() + x.sum()).backward()
        grads.append(yi.grad)
    assert rel_err(grads[0], grads[1]) <= 1e-9
    assert_grads_equal(rev, plain, tol=1e-9)
    yi = y.clone().requires_grad_()
    held = saved_bytes(lambda: rev.inverse(yi), rev.parameters())
    assert held == 2 * 4 * 4 * 4 * 8  # the rebuilt input only
    assert saved_bytes(lambda: plain.inverse(yi), plain.parameters()) > 8 * held


def test_inverse_under_autograd_with_dropout_replays_the_masks() -> None:
    torch.manual_seed(9)
    def drop() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))

    rev = ReversibleSequence([AdditiveCoupling(drop(), drop()) for _ in range(3)]).double()
    plain = plain_twin(rev)
    y = torch.randn(4, 6, dtype=torch.float64)
    grads = []
    for m in (rev, plain):
        torch.manual_seed(1)
        yi = y.clone().requires_grad_()
        m.inverse(yi).square().sum().backward()
        grads.append(yi.grad)
    assert rel_err(grads[0], grads[1]) <= 1e-9
    assert_grads_equal(rev, plain, tol=1e-9)


# --- check_invertible --------------------------------------------------------------------------------


class WrongInverse(InvertibleModule):
    """x + tanh(W x)'s 'inverse' forgets the nonlinearity: close, but wrong."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.lin = nn.Linear(c, c)

    def forward(self, x):
        x1, x2 = x.chunk(2, 1)
        return torch.cat([x1 + torch.tanh(self.lin(x2)), x2], 1)

    def inverse(self, y):
        y1, y2 = y.chunk(2, 1)
        return torch.cat([y1 - self.lin(y2), y2], 1)


def test_check_invertible_catches_a_wrong_inverse_and_names_the_block() -> None:
    torch.manual_seed(10)
    good = ReversibleSequence([AdditiveCoupling(nn.Linear(3, 3), nn.Linear(3, 3)), AffineCoupling(nn.Linear(3, 6), None)])
    x = torch.randn(5, 6)
    report = check_invertible(good, x)
    assert report.ok and report.max_abs_error <= 1e-5
    bad = ReversibleSequence([*good.blocks, WrongInverse(3)])
    with pytest.raises(ValueError, match=r"block 2 \(WrongInverse\).*does not undo"):
        check_invertible(bad, x)
    report = check_invertible(bad, x, raise_error=False)
    assert not report.ok and report.block == 2 and report.max_abs_error > 1e-3
    with pytest.raises(ValueError, match="WrongInverse"):
        check_invertible(WrongInverse(3), x)


def test_check_invertible_leaves_state_alone_and_replays_dropout() -> None:
    torch.manual_seed(11)
    seq = ReversibleSequence([AdditiveCoupling(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)), nn.BatchNorm1d(3))])
    before = copy.deepcopy(seq.state_dict())
    x = torch.randn(8, 6)
    rng = torch.get_rng_state()
    report = check_invertible(seq, x, atol=1e-6)
    assert report.ok  # the dropout mask of the forward is replayed for the inverse
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in seq.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- RNG state: a few bytes per block ------------------------------------------------------------------


def dropout_seq(n: int, c: int = 4) -> ReversibleSequence:
    def branch() -> nn.Module:
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.Dropout(0.2))

    return ReversibleSequence([AdditiveCoupling(branch(), branch()) for _ in range(n)])


def rng_bytes(y: torch.Tensor) -> list[int]:
    node, sizes = y.grad_fn, []
    while node is not None and type(node).__name__ == "_ReversibleBlockFunctionBackward":
        sizes.append(node.tape.nbytes())
        node = node.next_functions[0][0]
    return sizes


@pytest.mark.parametrize("shape", [(1, 2, 4, 4), (4, 16, 16, 16)])
def test_rng_state_costs_a_few_bytes_per_block(shape: tuple[int, ...]) -> None:
    """8 bytes per region that drew numbers, however many it drew (16 per coupling with dropout)."""
    torch.manual_seed(12)
    x = torch.randn(*shape, requires_grad=True)
    sizes = rng_bytes(dropout_seq(64, c=shape[1] // 2)(x))
    assert sizes == [16] * 64
    assert rng_bytes(make_deterministic(x.shape[1])(x)) == [0] * 4


def make_deterministic(channels: int) -> ReversibleSequence:
    c = channels // 2
    return ReversibleSequence([AdditiveCoupling(nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)) for _ in range(4)])


def test_rng_stream_after_a_sequence() -> None:
    """A deterministic sequence leaves the generator alone; one with dropout advances it by a
    seed per region, the same in both modes and whatever the number of numbers drawn."""
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    seq = make_deterministic(8)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    seq(x).sum().backward()
    assert torch.equal(torch.get_rng_state(), state)
    after = []
    for batch in (2, 6):
        for reversible in (True, False):
            torch.manual_seed(1)
            seq = dropout_seq(3)
            seq.reversible = reversible
            xb = torch.randn(batch, 8, 4, 4, requires_grad=True)
            torch.manual_seed(2)
            seq(xb).sum().backward()
            after.append(torch.rand(4))
    assert all(torch.equal(a, after[0]) for a in after)


def test_rng_replay_out_of_order_and_twice() -> None:
    """autograd.grad through part of the chain, then twice with retain_graph: same masks each time."""
    torch.manual_seed(13)
    rev = dropout_seq(6).double()
    plain = plain_twin(rev)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    results = []
    for m in (rev, plain):
        torch.manual_seed(5)
        xi = x.clone().requires_grad_()
        loss = m(xi).square().sum()
        params = list(m.parameters())
        first = torch.autograd.grad(loss, [xi, *params], retain_graph=True)
        second = torch.autograd.grad(loss, [xi, *params])
        results.append((first, second))
    for a, b in zip(results[0][0], results[1][0]):
        assert rel_err(a, b) <= 1e-9
    for a, b in zip(results[0][1], results[0][0]):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dropout_keeps_only_the_cuda_generator() -> None:
    torch.manual_seed(14)
    rev = dropout_seq(4).cuda()
    plain = plain_twin(rev)
    x = torch.randn(2, 8, 4, 4, device="cuda")
    y = rev(x.clone().requires_grad_())
    node = y.grad_fn
    while node is not None and type(node).__name__ == "_ReversibleBlockFunctionBackward":
        for seed, cuda_state in node.tape.states.values():
            assert seed is None and cuda_state is not None and cuda_state.nbytes <= 16
        node = node.next_functions[0][0]
    grads = []
    for m in (rev, plain):
        torch.manual_seed(3)
        xi = x.clone().requires_grad_()
        m(xi).square().sum().backward()
        grads.append(xi.grad)
    assert rel_err(grads[0], grads[1]) <= 1e-5


# --- gradient buffers seen by someone else -------------------------------------------------------------


def test_gradient_held_by_a_users_hook_is_not_overwritten() -> None:
    """A hook keeps a gradient that autograd then passes on unchanged as G's input gradient."""
    torch.manual_seed(15)

    class Keep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.kept: list[torch.Tensor] = []

        def forward(self, z):
            h = z + 0.0  # AddBackward passes its gradient straight through to z
            if h.requires_grad:
                h.register_hook(lambda g: self.kept.append(g))
            return self.conv(torch.tanh(h))

    rev = ReversibleSequence([AdditiveCoupling(nn.Conv2d(2, 2, 1), Keep())]).double()
    plain = plain_twin(rev)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    for m in (rev, plain):
        m(x.clone().requires_grad_()).square().sum().backward()
    assert torch.equal(rev.blocks[0].G.kept[-1], plain.blocks[0].G.kept[-1])
    assert_grads_equal(rev, plain, tol=1e-9)


def test_inverse_under_autograd_through_zero_padding() -> None:
    """ChannelZeroPad's inverse is a slice (a view of its input): the inverse chain handles it."""
    torch.manual_seed(16)
    seq = ReversibleSequence(
        [
            ChannelZeroPad(2),
            AdditiveCoupling(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)),
            ChannelZeroPad(2, halves=True),
            AdditiveCoupling(nn.Conv2d(4, 4, 1), None),
        ]
    ).double()
    plain = plain_twin(seq)
    with torch.no_grad():
        y = seq(torch.randn(2, 4, 3, 3, dtype=torch.float64))
    grads = []
    for m in (seq, plain):
        yi = y.clone().requires_grad_()
        m.inverse(yi).square().sum().backward()
        grads.append(yi.grad)
    assert rel_err(grads[0], grads[1]) <= 1e-12
    assert_grads_equal(seq, plain, tol=1e-9)


def test_wrong_inverse_is_an_error_at_the_first_backward() -> None:
    """Without check_invertible, the first reverse step of a user-written block catches it."""
    torch.manual_seed(17)
    seq = ReversibleSequence([AdditiveCoupling(nn.Linear(3, 3), None), WrongInverse(3)])
    x = torch.randn(4, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"block 1 \(WrongInverse\).*does not undo"):
        seq(x).sum().backward()
    assert all(p.grad is None for p in seq.blocks[0].parameters())  # no gradient was handed out


def test_correct_user_block_passes_the_round_trip_check_under_autocast() -> None:
    class Shift(InvertibleModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            x1, x2 = x.chunk(2, 1)
            return torch.cat([x1 + torch.tanh(self.lin(x2)), x2], 1)

        def inverse(self, y):
            y1, y2 = y.chunk(2, 1)
            return torch.cat([y1 - torch.tanh(self.lin(y2)), y2], 1)

    torch.manual_seed(18)
    rev = ReversibleSequence([Shift(), AdditiveCoupling(nn.Linear(3, 3), nn.Linear(3, 3)), Shift()])
    plain = plain_twin(rev)
    x = torch.randn(5, 6)
    for autocast in (False, True):
        grads = []
        for m in (rev, plain):
            xi = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                m(xi).square().sum().backward()
            grads.append(xi.grad)
        assert rel_err(grads[0], grads[1]) <= (5e-2 if autocast else 1e-5)


def test_inverse_under_autograd_with_two_streams() -> None:
    torch.manual_seed(19)

    def branch() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))

    rev = ReversibleSequence([AdditiveCoupling(branch(), branch()) for _ in range(3)]).double()
    plain = plain_twin(rev)
    y1, y2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for m in (rev, plain):
        a, b = y1.clone().requires_grad_(), y2.clone().requires_grad_()
        x1, x2 = m.inverse((a, b))
        (x1.square().sum() + 3 * x2.sum()).backward()
        grads.append((a.grad, b.grad))
    for got, want in zip(grads[0], grads[1]):
        assert rel_err(got, want) <= 1e-12
    assert_grads_equal(rev, plain, tol=1e-9)
