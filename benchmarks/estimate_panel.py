"""The models the estimate is held to (issue 13): registered, recurrent, attention, torchvision.

Each entry builds a fresh model and names the shape of one sample. Shared by
``benchmarks/estimate_accuracy.py`` and ``tests/test_estimate_accuracy.py``; torchvision and
transformers (GPT-2 and BERT built from configs, as tests/test_track_models.py uses them) are test
extras here, never runtime dependencies of memprof.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class RecurrentLM(nn.Module):
    """A 2-layer LSTM/GRU over 256-feature steps with a 256-way head (the issue's 256->512 LSTM)."""

    def __init__(self, kind: str = "LSTM", features: int = 256, hidden: int = 512, layers: int = 2) -> None:
        super().__init__()
        self.rnn = getattr(nn, kind)(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, features) -> (B, T, features)
        return self.head(self.rnn(x)[0])


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(256, 8, 1024, batch_first=True)
    return nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name)

    return build


def _small_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=64, patch_size=8, num_layers=6, num_heads=8, hidden_dim=256, mlp_dim=1024)


def _gpt2() -> nn.Module:
    """tests/test_track_models.py's GPT-2: 2 layers, 128 wide, 32 positions, a 512-token vocabulary."""
    import transformers

    cfg = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=32, vocab_size=512)
    return transformers.GPT2LMHeadModel(cfg)


def _bert() -> nn.Module:
    """tests/test_track_models.py's BERT classifier: 2 layers, 32 wide, 3 labels."""
    import transformers

    cfg = transformers.BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(cfg)


def _gpt2_step() -> dict[str, Any]:
    """Token ids and labels (the model's own loss), AdamW, bf16 autocast, accumulation 2."""
    ids = torch.randint(512, (2, 32), generator=torch.Generator().manual_seed(0))
    return {"inputs": {"input_ids": ids, "labels": ids}, "optimizer": "adamw", "autocast": "bfloat16",
            "accumulation_steps": 2}


def _bert_step() -> dict[str, Any]:
    """A dict of input_ids, an all-ones attention_mask and labels; AdamW."""
    g = torch.Generator().manual_seed(0)
    return {"inputs": {"input_ids": torch.randint(256, (2, 16), generator=g),
                       "attention_mask": torch.ones(2, 16, dtype=torch.long),
                       "labels": torch.randint(3, (2,), generator=g)}, "optimizer": "adamw"}


def _registered(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from memprof.models import get_model

        return get_model(name)

    return build


@dataclass(frozen=True)
class PanelModel:
    """One model of the panel: its name, builder and one sample's shape."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    #: batch sizes the accuracy table uses (the issue's 2/32/128 where the model allows)
    batch_sizes: tuple[int, ...] = (2, 32, 128)
    #: further arguments of profile_step (inputs, optimizer, autocast, accumulation_steps), built when run
    step: Callable[[], dict[str, Any]] | None = None


PANEL: tuple[PanelModel, ...] = (
    PanelModel("vgg19", _registered("vgg19"), (3, 32, 32)),
    PanelModel("revvgg", _registered("revvgg"), (3, 32, 32)),
    PanelModel("irevvgg", _registered("irevvgg"), (3, 32, 32)),
    PanelModel("lstm-lm", lambda: RecurrentLM("LSTM"), (128, 256)),
    PanelModel("gru-lm", lambda: RecurrentLM("GRU"), (128, 256)),
    PanelModel("transformer-encoder", _encoder, (64, 256)),
    PanelModel("resnet50", _torchvision("resnet50"), (3, 64, 64)),
    PanelModel("mobilenet_v2", _torchvision("mobilenet_v2"), (3, 64, 64)),
    PanelModel("efficientnet_b0", _torchvision("efficientnet_b0"), (3, 64, 64)),
    PanelModel("convnext_tiny", _torchvision("convnext_tiny"), (3, 64, 64)),
    PanelModel("vit-small-64", _small_vit, (3, 64, 64)),
    PanelModel("gpt2-hf", _gpt2, (), step=_gpt2_step),
    PanelModel("bert-hf", _bert, (), step=_bert_step),
)


@dataclass(frozen=True)
class Accuracy:
    """One model at one batch size: the measured CPU step beside the estimate."""

    model: str
    batch_size: int
    measured: Any  # StepProfile
    estimated: Any  # StepProfile

    @property
    def error(self) -> float:
        """(estimated - measured) / measured allocator peak."""
        return self.estimated.peak_bytes / self.measured.peak_bytes - 1


def measure_and_estimate(pm: PanelModel, batch_size: int, seed: int = 0) -> Accuracy:
    """Measure one CPU training step of ``pm`` (one thread) and estimate it (nothing allocated)."""
    from memprof.api.step import profile_step
    from memprof.recording.threads import one_thread

    torch.manual_seed(seed)
    model = pm.build()
    step = pm.step() if pm.step is not None else {}
    shape = pm.input_shape or None
    with one_thread():
        measured = profile_step(model, batch_size, shape, name=pm.name, **step)
        estimated = profile_step(model, batch_size, shape, name=pm.name, estimate=True, **step)
    return Accuracy(pm.name, batch_size, measured, estimated)


def panel_model(name: str) -> PanelModel:
    """The panel entry called ``name`` (ValueError listing the names otherwise)."""
    for m in PANEL:
        if m.name == name:
            return m
    raise ValueError(f"unknown panel model {name!r}; allowed: {', '.join(m.name for m in PANEL)}")
