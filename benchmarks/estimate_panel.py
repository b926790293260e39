"""The models the estimate is held to (issue 13): registered, recurrent, attention, torchvision.

Each entry builds a fresh model and names the shape of one sample. Shared by
``benchmarks/estimate_accuracy.py`` and ``tests/test_estimate_accuracy.py``; torchvision is a
test extra here, never a runtime dependency of memprof.
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
    with one_thread():
        measured = profile_step(model, batch_size, pm.input_shape, name=pm.name)
        estimated = profile_step(model, batch_size, pm.input_shape, name=pm.name, estimate=True)
    return Accuracy(pm.name, batch_size, measured, estimated)


def panel_model(name: str) -> PanelModel:
    """The panel entry called ``name`` (ValueError listing the names otherwise)."""
    for m in PANEL:
        if m.name == name:
            return m
    raise ValueError(f"unknown panel model {name!r}; allowed: {', '.join(m.name for m in PANEL)}")
