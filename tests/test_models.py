"""The model registry and the registered models: shapes, parameter counts, reversible twins."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import memprof
from memprof.models import get_model, get_model_info, list_models, registry
from memprof.models.vgg import CFGS
from memprof.recording.threads import one_thread
from memprof.reversible import ReversibleSequence, set_reversible
from tests.helpers import rel_err, saved_bytes

MODELS = list_models()
TOL = 1e-5

#: The deck's "Rev-VGG Details" parameter column (seed), by our child names.
DECK_REVVGG = {
    "conv": 1_792,
    "revblock1": 517_632,
    "revblock2": 2_067_456,
    "revblock3": 8_263_680,
    "revblock4": 9_443_328,
    "linear_block": 525_312,
    "fc": 5_130,
}
#: Rev-VGG's children the deck has no row for: the main stream's BatchNorm before pool5 and the
#: linear block (NOTE [ Normalisation in the main stream ]).
ADDED_REVVGG = {"norm5": 1_024}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Run this module's full-size models on one intra-op thread.

    On a loaded 2-core machine two OpenMP threads spin-wait on each other: this file then took
    2 minutes instead of 25 s. Restored afterwards.
    """
    with one_thread():
        yield


@functools.lru_cache(maxsize=None)
def built(name: str) -> nn.Module:
    """One instance per model for the tests that only read it (counts, names, state dict)."""
    return get_model(name)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def has_reversible(module: nn.Module) -> bool:
    return any(isinstance(m, ReversibleSequence) for m in module.modules())


def test_list_models_is_sorted_and_complete() -> None:
    assert MODELS == sorted(MODELS)
    assert {"vgg19", "revvgg", "irevvgg", "vit", "revvit"} <= set(MODELS)
    assert memprof.list_models() == MODELS
    assert isinstance(memprof.get_model("vgg19"), nn.Module)


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_and_num_classes(name: str) -> None:
    info = get_model_info(name)
    x = torch.randn(2, *info.input_shape)
    with torch.no_grad():
        assert built(name)(x).shape == (2, 10)
        assert get_model(name, num_classes=7)(x).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_a_training_step_at_batch_one(name: str) -> None:
    """Every model trains at batch 1 (no BatchNorm that sees a single value per channel)."""
    model = get_model(name).train()
    model(torch.randn(1, *get_model_info(name).input_shape)).sum().backward()


def test_vgg19_parameters_are_the_decks() -> None:
    model = built("vgg19")
    assert count(model) == 20_565_834
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [512, 512, 10]


def test_vgg19_classifier_input_starts_small() -> None:
    # NOTE [ Why VGG-19 starts slowly ]: the last BatchNorm's weight starts at CLASSIFIER_INPUT_GAIN, so the
    # classifier's ReLU'd, max-pooled input starts with |batch mean|^2 ~ 0.2^2 x 512 x 1.03^2 = 22, where
    # PyTorch's weight 1 gives ~540 (the mean of the largest of four ReLU'd unit normals is 1.03).
    from memprof.models.vgg import CLASSIFIER_INPUT_GAIN

    torch.manual_seed(0)
    model = get_model("vgg19").train()
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((n.weight == 1).all()) for n in norms[:-1])
    assert bool((norms[-1].weight == CLASSIFIER_INPUT_GAIN).all()) and CLASSIFIER_INPUT_GAIN == 0.2
    seen = {}
    model.classifier[0].register_forward_hook(lambda mod, inp, out: seen.__setitem__("x", inp[0].detach()))
    x = torch.randn(16, 3, 32, 32)
    with one_thread():
        model(x)
        small = seen["x"].mean(0).pow(2).sum().item()
        nn.init.ones_(norms[-1].weight)  # PyTorch's default, the negative control
        model(x)
        large = seen["x"].mean(0).pow(2).sum().item()
    assert 10 < small < 40 and 400 < large < 800, (small, large)


def test_revvgg_blocks_match_the_deck_column() -> None:
    model = built("revvgg")
    names = [name for name, _ in model.named_children()]
    assert names == [
        "conv", "relu", "pool1", "revblock1", "pool2", "revblock2", "pool3", "revblock3",
        "pool4", "revblock4", "norm5", "pool5", "flatten", "linear_block", "fc",
    ]
    counts = {name: count(child) for name, child in model.named_children() if count(child)}
    assert counts.keys() == DECK_REVVGG.keys() | ADDED_REVVGG.keys()
    for name, deck in DECK_REVVGG.items():
        assert abs(counts[name] - deck) <= 0.01 * deck, (name, counts[name], deck)
    # The RevBlocks are within 0.3% of the deck's column: their couplings reproduce it exactly,
    # the BatchNorm before the transition adds 2 * in_channels (at most +0.025%).
    for k, deck in enumerate((517_632, 2_067_456, 8_263_680, 9_443_328), start=1):
        block = model.get_submodule(f"revblock{k}")
        assert counts[f"revblock{k}"] == deck + 2 * block.transition.in_channels
        assert abs(counts[f"revblock{k}"] - deck) <= 0.003 * deck
    assert {k: counts[k] for k in ADDED_REVVGG} == ADDED_REVVGG
    assert counts["linear_block"] == 526_336  # the deck's 525,312 + 1,024 (documented)
    assert count(model) == 20_828_298


def test_revvgg_classifier_input_is_centred_over_the_batch() -> None:
    # NOTE [ Normalisation in the main stream ]: pool5 averages norm5's output, so in training mode
    # the linear block (the identity at the start) and fc see inputs of zero batch mean; the deck's
    # max-pool gave |mean|^2 of about 570 on digits (one per feature here, ~1 each).
    torch.manual_seed(0)
    model = get_model("revvgg").train()
    seen = {}
    model.fc.register_forward_hook(lambda mod, inp, out: seen.__setitem__("x", inp[0].detach()))
    with one_thread():
        model(torch.randn(16, 3, 32, 32))
    x = seen["x"]
    assert x.mean(0).pow(2).sum() < 1e-6 * x.var(0).sum()
    model.pool5 = nn.MaxPool2d(2, 2)  # the deck's pool5: its outputs are the largest of four, not centred
    with one_thread():
        model(torch.randn(16, 3, 32, 32))
    assert seen["x"].mean(0).pow(2).sum() > 0.5 * seen["x"].shape[1]


def test_irevvgg_parameters_and_invertible_body() -> None:
    model = get_model("irevvgg").eval()
    assert count(model) == 24_064_322  # the head's BatchNorm2d(1536) is 3,072 of it
    assert [count(b) for b in model.body.blocks] == [0, 50_680, 0, 962_112, 0, 4_137_216, 0, 18_895_872]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model.body(x)
        assert y.shape == (2, 1536, 2, 2)  # 6,144 elements per sample, as at every stage
        assert rel_err(model.body.inverse(y), x) < 1e-4


def deck_rows(cfg: list[int | str]) -> list[str]:
    """The layer column of the deck's "VGG-19 Details" table, derived from a VGG config."""
    rows: list[str] = []
    for v in cfg:
        rows += ["MaxPool2d"] if v == "M" else ["Conv2d", "BatchNorm2d"]
    return rows + ["Linear"] * 3


@pytest.mark.parametrize("name", MODELS)
def test_default_table_depth_gives_the_deck_rows(name: str) -> None:
    info = get_model_info(name)
    rows = [
        type(m).__name__
        for n, m in built(name).named_modules()
        if n and n.count(".") + 1 == info.table_depth
    ]
    # Rows the deck leaves out: in-place ReLUs (they add no activations) and Flatten (a view).
    shown = [r for r in rows if r not in ("ReLU", "Flatten")]
    expected = {
        "vgg19": deck_rows(CFGS["E"]),  # 40 rows
        "revvgg": ["Conv2d", "MaxPool2d"] + ["RevBlock", "MaxPool2d"] * 3
        + ["RevBlock", "BatchNorm2d", "AvgPool2d", "ReversibleSequence", "Linear"],  # pool5 averages (vgg.py)
        # stem, revblock1, down2, revblock2, ..., down4, revblock4: the body's stages.
        "irevvgg": ["ReversibleSequence"] + ["ReversibleSequence", "InvertibleDownsample"] * 3 + ["ReversibleSequence"],
        # patch embedding (the conv stem, one row), one row per transformer block, the head's norm and Linear.
        "vit": ["ConvStem", "PositionEmbedding"] + ["ViTBlock"] * 12 + ["BatchNorm1d", "Linear"],
        # depth 3: the conv stem's layers, then the couplings (leaves above are rows too)
        "revvit": ["Conv2d", "BatchNorm2d"] * 4 + ["Conv2d"] + ["AdditiveCoupling"] * 12,
    }
    assert shown == expected[name]


@pytest.mark.parametrize("name", MODELS)
def test_state_dicts_of_twins_agree(name: str) -> None:
    a = built(name).state_dict()
    b = get_model(name, reversible=False).state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)


# NOTE [ Why the twins are compared in float64 ]
# The reversible backward rebuilds each coupling's input by subtraction, exact up to rounding.
# In float32 that rounding (1e-7 relative, 1e-6 after a few couplings) moves some BatchNorm
# outputs that lie within 1e-6 of zero to the other side of their ReLU, and each such flipped
# gate changes one element of the backward signal by its full value. On Rev-VGG at batch 4
# this gives per-tensor errors max|a-b|/max|b| up to 0.12 (norm-wise 0.016) on a few weights,
# while the same comparison in float64 agrees to 1e-14: the two backward passes compute the
# same function, and float32 ReLU networks are simply not reversible to 1e-5 elementwise.
# So the equality is asserted in float64; float32 is measured in benchmarks, not pinned here.


def randomize_zero_inits(model: nn.Module) -> None:
    """Give the weights that start at zero (NOTE [ Couplings start as the identity ]) random
    values, so that every coupling is a real function and the comparison can fail."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.5)


@pytest.mark.parametrize("name", MODELS)
def test_reversible_gradients_equal_plain_twin(name: str) -> None:
    torch.manual_seed(0)
    rev = get_model(name, reversible=True).train().double()
    randomize_zero_inits(rev)
    plain = get_model(name, reversible=False).train().double()
    plain.load_state_dict(rev.state_dict())
    if name in ("revvgg", "irevvgg", "revvit"):
        assert has_reversible(rev)

    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    target = torch.randint(0, 10, (4,))
    results = []
    for model in (rev, plain):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        nn.functional.cross_entropy(out, target).backward()
        results.append((out, xi.grad, dict(model.named_parameters()), dict(model.named_buffers())))
    (out_r, gx_r, p_r, b_r), (out_p, gx_p, p_p, b_p) = results
    assert out_p.shape == (4, 10)
    assert rel_err(out_r, out_p) <= TOL
    assert rel_err(gx_r, gx_p) <= TOL
    for key, p in p_p.items():
        assert p.grad is not None and p_r[key].grad is not None, key
        if p.grad.abs().max() <= 1e-12:
            # Zero in exact arithmetic: in Rev-VGG the last coupling of a RevBlock adds G's
            # BatchNorm bias to its channels, max-pooling passes a per-channel constant through
            # unchanged, and the next RevBlock's BatchNorm subtracts it again. Both twins must
            # then give rounding noise only.
            assert p_r[key].grad.abs().max() <= 1e-12, key
            continue
        assert rel_err(p_r[key].grad, p.grad) <= TOL, key
    # BatchNorm statistics are folded in once, as in the plain network (not again in backward).
    for key, buf in b_p.items():
        assert rel_err(b_r[key].double(), buf.double()) <= TOL, key


def test_reversible_models_save_less_than_vgg19() -> None:
    x = torch.randn(2, 3, 32, 32)
    saved = {}
    for name in ("vgg19", "revvgg", "irevvgg"):
        model = get_model(name)
        for reversible in (True, False):
            set_reversible(model, reversible)
            saved[name, reversible] = saved_bytes(lambda: model(x), model.parameters())
    base = saved["vgg19", True]
    assert saved["vgg19", False] == base
    # 0.358: the BatchNorm before each transition (NOTE [ Normalisation in the main stream ])
    # keeps one more (c_in, H, W) tensor per RevBlock than the deck's design (0.316).
    assert saved["revvgg", True] <= 0.37 * base < saved["revvgg", False]
    assert saved["irevvgg", True] <= 0.06 * base < saved["irevvgg", False]
    # irevvgg keeps only the body's output (6,144 floats per sample; the head's BatchNorm saves
    # the same tensor, plus four per-channel vectors of 1,536 floats, whatever the batch: its
    # running mean and variance and its batch mean and inverse deviation) and the pooled
    # features (1,536): nothing that grows with depth.
    assert saved["irevvgg", True] == 2 * 4 * (6_144 + 1_536) + 4 * 4 * 1_536


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="nope") as info:
        get_model("nope")
    for name in MODELS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("vgg19", num_classes=0)


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    with pytest.raises(ValueError, match="already registered.*vgg19"):
        registry.register_model("vgg19")(lambda num_classes: nn.Linear(3, num_classes))

    @registry.register_model("tiny", input_shape=(3,), description="a test model")
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Linear(3, num_classes)

    assert "tiny" in list_models()
    assert get_model_info("tiny").input_shape == (3,)
    assert get_model("tiny", num_classes=4)(torch.randn(2, 3)).shape == (2, 4)
