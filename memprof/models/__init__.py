"""Registered models: ``list_models()``, ``get_model(name)``, ``get_model_info(name)``.

Importing this package registers ``vgg19``, ``revvgg``, ``irevvgg``, ``vit`` and ``revvit``.
"""

from __future__ import annotations

from . import irevvgg as _irevvgg  # noqa: F401  (registers irevvgg)
from . import vgg as _vgg  # noqa: F401  (registers vgg19, revvgg)
from . import vit as _vit  # noqa: F401  (registers vit, revvit)
from .irevvgg import IRevVGG
from .registry import ModelInfo, get_model, get_model_info, list_models, register_model
from .vgg import SEED_DESIGN_NOTES, VGG, RevBlock, RevVGG
from .vit import RevViT, ViT, ViTConfig

__all__ = [
    "IRevVGG",
    "ModelInfo",
    "RevBlock",
    "RevVGG",
    "RevViT",
    "SEED_DESIGN_NOTES",
    "VGG",
    "ViT",
    "ViTConfig",
    "get_model",
    "get_model_info",
    "list_models",
    "register_model",
]
