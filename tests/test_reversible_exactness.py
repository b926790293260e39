"""Issue 11: wrong results of the reversible engine, each pinned by a regression test.

Every test builds a reversible network and its ``reversible=False`` twin (same weights, same
inputs) and asserts that gradients agree (float64, tight) and buffers agree bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from memprof.reversible import AdditiveCoupling, ReversibleSequence, set_reversible
from tests.helpers import rel_err


def plain_twin(model: nn.Module) -> nn.Module:
    return set_reversible(copy.deepcopy(model), False)


def grads_of(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters()}


def assert_grads_equal(rev: nn.Module, plain: nn.Module, tol: float = 1e-12) -> None:
    """Every parameter gradient within ``tol`` of the plain one, relative to the largest element of
    that gradient or, for gradients that are zero up to rounding (a bias before a norm layer), of
    all gradients."""
    gr, gp = grads_of(rev), grads_of(plain)
    assert gr.keys() == gp.keys()
    scale = max((g.abs().max().item() for g in gp.values() if g is not None), default=0.0)
    for name in gr:
        assert (gr[name] is None) == (gp[name] is None), name
        if gp[name] is not None:
            err = (gr[name] - gp[name]).abs().max().item() / max(gp[name].abs().max().item(), 1e-6 * scale)
            assert err <= tol, (name, err)


def assert_buffers_equal(rev: nn.Module, plain: nn.Module) -> None:
    br, bp = dict(rev.named_buffers()), dict(plain.named_buffers())
    assert br.keys() == bp.keys()
    for name, b in br.items():
        assert torch.equal(b, bp[name]), (name, b, bp[name])


# --- 1. one buffer returned for two gradients -------------------------------------------------


class AddP(nn.Module):
    """tanh(z + p) with p of z's full shape: autograd may return one buffer as dz and dp."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.randn(shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z + self.p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parameter_gradient_aliasing_the_input_gradient_is_not_overwritten(dtype: torch.dtype) -> None:
    """Issue 11 reproduction: G(z) = tanh(z + p), batch 1 -> dL/dp and dL/dz are one tensor."""
    torch.manual_seed(0)
    rev = ReversibleSequence([AdditiveCoupling(nn.Conv2d(2, 2, 3, padding=1), AddP((1, 2, 4, 4)))]).to(dtype)
    plain = plain_twin(rev)
    x = torch.randn(1, 4, 4, 4, dtype=dtype)
    for m in (rev, plain):
        m(x.clone().requires_grad_()).square().sum().backward()
    assert_grads_equal(rev, plain, tol=1e-6 if dtype == torch.float32 else 1e-12)


# --- 2. buffers written by a forward are written once ----------------------------------------


class CallCounter(nn.Module):
    """Counts its calls in a buffer and lets the count shift its output (so replay must see it)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(self.conv(z)) * (1.0 + 0.1 * self.calls.to(z.dtype))


class ReplacesBuffer(nn.Module):
    """An exponential moving average of the input, kept by rebinding (not mutating) the buffer."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.register_buffer("ema", torch.zeros(c))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.ema = 0.9 * self.ema + 0.1 * z.detach().mean((0, 2, 3))
        return self.conv(z) + self.ema[:, None, None]


def branch(kind: str, c: int) -> nn.Module:
    norm = {
        "batchnorm": lambda: nn.BatchNorm2d(c),
        "batchnorm_cumulative": lambda: nn.BatchNorm2d(c, momentum=None),
        "instancenorm": lambda: nn.InstanceNorm2d(c, affine=True, track_running_stats=True),
        "groupnorm": lambda: nn.GroupNorm(2, c),
        "layernorm": lambda: nn.LayerNorm([c, 4, 4]),
    }
    if kind in norm:
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), norm[kind](), nn.Tanh())
    if kind == "counter":
        return CallCounter(c)
    return ReplacesBuffer(c)


KINDS = ["batchnorm", "batchnorm_cumulative", "instancenorm", "groupnorm", "layernorm", "counter", "ema"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_buffer_equals_the_plain_twins_after_steps(kind: str) -> None:
    """Three forward+backward steps: buffers bit-identical, gradients equal (float64)."""
    torch.manual_seed(1)
    rev = ReversibleSequence(
        [AdditiveCoupling(branch(kind, 4), branch(kind, 4)) for _ in range(3)]
    ).double()
    plain = plain_twin(rev)
    for step in range(3):
        x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
        for m in (rev, plain):
            m.zero_grad()
            m(x.clone().requires_grad_()).square().sum().backward()
        assert_buffers_equal(rev, plain)
        assert_grads_equal(rev, plain, tol=1e-9)
    if kind == "counter":
        assert all(int(b) == 3 for b in rev.buffers())


def test_buffers_equal_in_eval_mode_and_after_toggling() -> None:
    torch.manual_seed(2)
    rev = ReversibleSequence([AdditiveCoupling(branch("instancenorm", 4), branch("counter", 4))]).double()
    plain = plain_twin(rev)
    for mode in (True, False, True):
        rev.train(mode), plain.train(mode)
        x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
        for m in (rev, plain):
            m(x.clone().requires_grad_()).sum().backward()
        assert_buffers_equal(rev, plain)
    assert_grads_equal(rev, plain, tol=1e-9)


# --- 3. conditioning tensors -----------------------------------------------------------------


class Conditioned(nn.Module):
    """A branch that reads a conditioning tensor: conv(z) * (1 + scale(c)) + shift(c)."""

    def __init__(self, ch: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(dim, 2 * ch)

    def forward(self, z: torch.Tensor, c: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        scale, shift = self.film(c).chunk(2, dim=1)  # (B, ch) each
        out = torch.tanh(self.conv(z)) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return out if mask is None else out * mask


def test_conditioning_tensor_gets_the_plain_twins_gradient() -> None:
    torch.manual_seed(3)
    embed = nn.Embedding(5, 6).double()
    seq = ReversibleSequence([AdditiveCoupling(Conditioned(2, 6), Conditioned(2, 6)) for _ in range(3)]).double()
    rev, plain = seq, plain_twin(seq)
    embeds = (embed, copy.deepcopy(embed))
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 3, 4])
    mask = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    xgrads = []
    for m, e in zip((rev, plain), embeds):
        xi = x.clone().requires_grad_()
        m(xi, e(labels), mask=mask).square().sum().backward()
        xgrads.append(xi.grad)
    assert rel_err(xgrads[0], xgrads[1]) <= 1e-10
    assert_grads_equal(rev, plain, tol=1e-9)
    assert embeds[0].weight.grad is not None
    assert rel_err(embeds[0].weight.grad, embeds[1].weight.grad) <= 1e-10


def test_conditioning_gradient_via_autograd_grad_and_gradcheck() -> None:
    torch.manual_seed(4)
    seq = ReversibleSequence([AdditiveCoupling(Conditioned(2, 3), Conditioned(2, 3)) for _ in range(2)]).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, c: seq(x, c), (x, c), eps=1e-6, atol=1e-6)


class UsesOutsideTensor(nn.Module):
    """A branch that reads a tensor requiring grad that nobody hands it (a closure)."""

    def __init__(self, outside: torch.Tensor) -> None:
        super().__init__()
        self.outside = [outside]  # hidden from parameters() and buffers()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z * self.outside[0])


def test_unregistered_tensor_requiring_grad_is_an_error_at_backward() -> None:
    torch.manual_seed(5)
    learned = torch.randn(1, 2, 1, 1, requires_grad=True)
    derived = learned * 2  # a tensor computed outside the block, graph and all
    for outside in (learned, derived):
        seq = ReversibleSequence([AdditiveCoupling(UsesOutsideTensor(outside), nn.Conv2d(2, 2, 1))])
        loss = seq(torch.randn(2, 4, 3, 3, requires_grad=True)).sum()
        with pytest.raises(RuntimeError, match=r"block 0 .*F.*requires grad.*not.*(argument|parameter)"):
            loss.backward()


# --- 4. the outermost flag governs nested sequences -------------------------------------------


def test_outer_flag_false_runs_nested_sequences_plainly() -> None:
    def coupling() -> AdditiveCoupling:
        return AdditiveCoupling(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))

    inner = ReversibleSequence([coupling(), coupling()])
    outer = ReversibleSequence([coupling(), inner])
    outer.reversible = False  # inner.reversible stays True
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    nodes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: nodes.append(t.shape) or t, lambda t: t):
        y = outer(x)
    names = set()
    stack = [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in names:
            continue
        names.add(node)
        stack.extend(n for n, _ in node.next_functions)
    assert not any("Reversible" in type(n).__name__ for n in names)
    assert len(nodes) > 4  # every coupling saved its activations, as ordinary autograd does
    outer.reversible = True
    y = outer(x)
    assert type(y.grad_fn).__name__.startswith("_Reversible")


def test_spectral_norm_power_iteration_runs_once_per_step() -> None:
    """spectral_norm advances its power iteration (buffers _u, _v) in each training forward, and
    the normalised weight depends on them: the recomputation must see them as the forward did."""
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(7)

    def sn_branch() -> nn.Module:
        return nn.Sequential(spectral_norm(nn.Conv2d(2, 2, 3, padding=1)), nn.Tanh())

    rev = ReversibleSequence([AdditiveCoupling(sn_branch(), sn_branch()) for _ in range(2)]).double()
    plain = plain_twin(rev)
    for _ in range(3):
        x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
        for m in (rev, plain):
            m.zero_grad()
            m(x.clone().requires_grad_()).square().sum().backward()
        assert_buffers_equal(rev, plain)
        assert_grads_equal(rev, plain, tol=1e-9)
