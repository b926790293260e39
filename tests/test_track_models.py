"""memprof.track() on real models in the user's own loop (tiny configurations).

For each: the peak ``track()`` reports is the allocator's replayed peak of the same loop run
with the profiler alone (no memprof hook), the fast and fine modes give the same peaks, and
the categories at the peak add up to it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from memprof.api.track import track
from memprof.recording.allocations import CpuAllocatorTracker
from tests.helpers import LSTMLM, Square

Case = tuple[nn.Module, torch.optim.Optimizer, Callable[[], None]]
Make = Callable[[], Case]


def _classifier_loop(model: nn.Module, shape: tuple[int, ...], classes: int, opt: str = "sgd") -> Case:
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if opt == "sgd"
                 else torch.optim.AdamW(model.parameters(), lr=1e-3))

    def step() -> None:
        x = torch.randn(2, *shape)
        y = torch.randint(classes, (2,))
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return model, optimizer, step


def resnet50() -> Case:
    from torchvision.models import resnet50 as build

    model = build(num_classes=10)
    return _classifier_loop(model, (3, 64, 64), 10)


def vit() -> Case:
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=10)
    return _classifier_loop(model, (3, 32, 32), 10, "adamw")


def efficientnet_b0() -> Case:
    from torchvision.models import efficientnet_b0 as build

    model = build(num_classes=10)
    return _classifier_loop(model, (3, 32, 32), 10)


def timm_model() -> Case:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    return _classifier_loop(model, (3, 32, 32), 10, "adamw")


def gpt2() -> Case:
    """GPT-2 from a config: 2 layers, 128 wide, token ids and labels, AdamW, bf16 autocast, accumulation 2."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=32, vocab_size=512)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for _ in range(2):  # gradient accumulation
            ids = torch.randint(cfg.vocab_size, (2, 32))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss / 2
            loss.backward()
        opt.step()

    return model, opt, step


def bert() -> Case:
    """A BERT classifier called with a dict of inputs (input_ids, attention_mask, labels)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        batch = {"input_ids": torch.randint(256, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long),
                 "labels": torch.randint(3, (2,))}
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()

    return model, opt, step


def lstm_lm() -> Case:
    model = LSTMLM()
    opt = torch.optim.Adam(model.parameters())

    def step() -> None:
        ids = torch.randint(100, (4, 17))
        opt.zero_grad(set_to_none=True)
        logits = model(ids[:, :-1])
        nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()

    return model, opt, step


class _CustomFn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 64)
        self.b = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(Square.apply(self.a(x)))


def custom_function() -> Case:
    model = _CustomFn()
    return _classifier_loop(model, (16,), 4)


def compiled() -> Case:
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 4))
    _, opt, step = _classifier_loop(torch.compile(model), (16,), 4)
    step()  # compile outside the measured loop
    return model, opt, step


def reversible() -> Case:
    from memprof.models import get_model

    model = get_model("irevvgg")
    return _classifier_loop(model, (3, 32, 32), 10)


CASES: dict[str, Make] = {
    "resnet50": resnet50, "vit": vit, "efficientnet_b0": efficientnet_b0, "timm": timm_model,
    "gpt2": gpt2, "bert": bert, "lstm_lm": lstm_lm, "custom_function": custom_function,
    "compiled": compiled, "reversible": reversible,
}


def _fresh(make: Make) -> Case:
    """A model after one warm-up step (optimizer state and lazy buffers exist, as in a running
    loop), its gradients set to None outside any measurement."""
    torch.manual_seed(0)
    model, opt, step = make()
    step()
    opt.zero_grad(set_to_none=True)
    return model, opt, step


def _resident(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    state = [t for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in list(model.parameters()) + list(model.buffers()) + state}
    return sum(storages.values())


@pytest.mark.parametrize("name", list(CASES))
def test_track_peak_is_the_allocator_replay(name):
    make = CASES[name]
    model, opt, step = _fresh(make)
    resident = _resident(model, opt)
    replay = CpuAllocatorTracker()
    with replay.track():
        step()
    replay_peak = resident + replay.result.peak_increase
    for mode in ("fast", "fine"):
        model, opt, step = _fresh(make)
        with track(mode=mode) as rec:
            step()
        s = rec.steady_state
        assert len(rec.steps) == 1
        if mode == "fast":
            assert s.peak_bytes == replay_peak
        else:
            # NOTE [ Fine mode and wrapped scalars ]: under a Python dispatch mode, an op taking
            # a Python number wraps it into an 8-byte tensor twice (outside and inside the mode)
            assert 0 <= s.peak_bytes - replay_peak <= 8
        assert sum(s.at_peak.values()) == s.peak_bytes
        assert min(s.at_peak.values()) >= 0
        assert s.at_peak["parameters"] >= sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) // 2
        assert any(r["forward_peak_bytes"] for r in s.modules)
