"""A pre-norm Vision Transformer and its reversible twin (Rev-ViT) for 32x32 inputs.

Config table -> layer builders -> model classes -> one-line registered builders, as in
:mod:`memprof.models.vgg`. ``VIT_CFGS["tiny"]`` (192 wide, 12 deep, 3 heads, patch 4, MLP
ratio 4) is the default of both ``vit`` and ``revvit``; every entry can be overridden by the
builders' keyword arguments.

- ``vit``: patch embedding (a convolutional stem of total stride ``patch``, one token per
  ``patch x patch`` patch, plus a learned position embedding), ``depth`` pre-norm blocks
  ``x = x + Attn(LN(x)); x = x + MLP(LN(x))``, then the head: BatchNorm over the tokens, mean
  over the tokens, Linear. The blocks are the standard ones; the stem and the head's norm
  differ from the original ViT's so that the deck's recipe (SGD, lr 0.1) trains it (NOTE
  [ A ViT that SGD trains ]).
- ``revvit``: the same patch embedding, then two streams (the embedding copied into both) run
  through ``depth`` reversible couplings (Mangalam et al. 2022, "Reversible Vision
  Transformers"): ``Y1 = X1 + Attn(LN(X2))``, ``Y2 = X2 + MLP(LN(Y1))``, i.e. memprof's
  :class:`AdditiveCoupling` with F = LN + attention and G = LN + MLP, split along the feature
  dimension of a (B, N, 2 * width) tensor, in one :class:`ReversibleSequence`. The streams are
  merged by averaging, and the head is the ViT's.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``. There is no
dropout and no class token (the head averages the tokens), so a forward draws no random
numbers and the two twins' gradients can be compared exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..reversible import AdditiveCoupling, ReversibleSequence
from ..validation import UsageError, check_vit_shape
from .registry import register_model

__all__ = [
    "VIT_CFGS",
    "Attention",
    "PatchEmbed",
    "PositionEmbedding",
    "RevViT",
    "TokenHead",
    "ViT",
    "ViTBlock",
    "ViTConfig",
    "check_vit_config",
    "make_attention_branch",
    "make_mlp_branch",
    "revvit",
    "vit",
]


@dataclass(frozen=True)
class ViTConfig:
    """The shape of a ViT or Rev-ViT.

    Attributes:
        width: the embedding width D (each Rev-ViT stream has this width).
        depth: transformer blocks (Rev-ViT: reversible couplings).
        heads: attention heads; ``width`` must be divisible by it.
        patch: the side of a square patch; ``image_size`` must be divisible by it.
        mlp_ratio: the MLP's hidden width is ``mlp_ratio * width``.
        image_size: the side of the square input.
        in_channels: input channels.
    """

    width: int = 192
    depth: int = 12
    heads: int = 3
    patch: int = 4
    mlp_ratio: int = 4
    image_size: int = 32
    in_channels: int = 3

    @property
    def num_patches(self) -> int:
        """Tokens per image: ``(image_size / patch) ** 2``."""
        return (self.image_size // self.patch) ** 2


#: Named configurations; "tiny" (DeiT-Ti's width, depth and heads) is the builders' default.
VIT_CFGS: dict[str, ViTConfig] = {"tiny": ViTConfig()}


def check_vit_config(cfg: ViTConfig) -> ViTConfig:
    """Check every field of ``cfg`` before anything is built.

    Raises:
        memprof.errors.UsageError: (a ValueError) for a non-positive field, a width not
            divisible by the heads, or an image size not divisible by the patch; the message
            names the values.
    """
    check_vit_shape(asdict(cfg))  # torch-free, so the CLI runs it before importing torch
    return cfg


class PositionEmbedding(nn.Module):
    """A learned embedding per token position, added to the tokens: (B, N, D) -> (B, N, D)."""

    def __init__(self, num_tokens: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight

    def extra_repr(self) -> str:
        return f"tokens={self.weight.shape[1]}, width={self.weight.shape[2]}"


# NOTE [ A ViT that SGD trains ]
# The original ViT (a patchify convolution, kernel = stride = patch; LayerNorm before the
# mean-pooled head; every Linear truncated-normal(0.02)) trained with the deck's recipe (SGD,
# lr 0.1, momentum 0.9, a one-epoch warm-up) on scikit-learn's digits reached 27.8% test accuracy
# after 8 epochs at depth 6 (Rev-ViT 25.6%), and was as slow at lr 0.01, with AdamW (lr 1e-3), with
# Xavier weights everywhere, with 2-D sin-cos position embeddings and with zero-initialised
# residual branches (train accuracy 12-32% after two or three epochs in each). Three changes make
# it learn; the blocks stay the standard pre-norm ones.
# - The head. Mean-pooled tokens are not centred over the batch (most tokens of every image are
#   background), so the classifier's input has a large mean shared by all images, whose
#   curvature bounds the learning rate while the class directions learn slowly: the cause
#   measured for VGG-19 (NOTE [ Why VGG-19 starts slowly ] in vgg.py) and, by the same fix, for
#   i-Rev-VGG. A BatchNorm over the tokens, per feature over (batch, tokens), centres them before
#   the mean; at batch 1 it still sees N values per feature, so it trains at any batch size.
# - The stem. Xiao et al. 2021 ("Early Convolutions Help Transformers See Better") show that the
#   patchify stem is what makes ViTs sensitive to the optimiser, and that a few 3x3
#   convolutions (BatchNorm + ReLU) then a 1x1 convolution let SGD train them.
#   Here a digit is 8x8 pixels upsampled to 32x32, so a 4x4 patch holds about one pixel of the
#   original and a patchify token is little more than one grey level; the stem's tokens see the
#   strokes around them. At depth 6, three epochs of lr 0.1: train accuracy 20% (original), 36%
#   with a stem of one stride-2 conv per factor 2, 41% with the BatchNorm head, 70% with both.
# - The attention's initialisation. With every Linear at std 0.02 (timm's and DeiT's), the
#   query-key logits of a 192-wide, 64-dimensional head have std 0.07-0.08 on digits, so every
#   head attends uniformly (entropy ln 64 = 4.16 nats); the logits are bilinear in W_q and W_k,
#   so each one's gradient is proportional to the other, and one learning rate for all
#   parameters (SGD; Adam rescales it away) leaves them there: the depth-12 ViT trained with the
#   recipe above (stem of one conv per factor 2, BatchNorm head) still attended uniformly in
#   blocks 3-12 after 15 epochs and stopped at 92.2%. Initialising q, k and v each Xavier-uniform
#   on its own (D, D) block, as the original JAX ViT does, starts the logits at std 0.6-1.4
#   (entropy 3.85-4.07).
# Screened at the default depth 12 (the recipe's data, batch, optimiser and one-epoch warm-up,
# then a constant lr 0.1; a short loop outside memprof train), train accuracy after epochs
# 1 / 2 / 3: 32 / 56 / 69% with the one-conv stem and std-0.02 attention, 41 / 60 / 79% with
# Xavier q, k, v, and 50 / 80 / 91% adding a stride-1 conv after each stride-2 one (the stem
# below; 165,648 parameters against 61,680). reports/training.md has the full runs.
# The blocks, the position embedding and the token count are the standard ViT's, and both twins
# share the stem, the head and the initialisation, so Rev-ViT against ViT still measures the
# blocks alone.


class ConvStem(nn.Sequential):
    """Xiao et al.'s convolutional stem, total stride ``patch``: (B, C, H, W) -> (B, width, H/patch, W/patch).

    Per factor 2 of ``patch``: a conv3x3 of stride 2 then a conv3x3 of stride 1, each followed by
    BatchNorm + ReLU, widths doubling up to ``width / 2``; then a convolution of kernel and
    stride the rest of ``patch`` (1x1 when ``patch`` is a power of two) to ``width``, with a
    bias. Patch 4, width 192: 3 -> 48 -> 48 -> 96 -> 96 -> 192, 165,648 parameters (the
    patchify conv had 9,408).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        halvings, rest = 0, cfg.patch
        while rest % 2 == 0:
            halvings, rest = halvings + 1, rest // 2
        layers: list[nn.Module] = []
        c = cfg.in_channels
        for i in range(halvings):
            out = max(1, cfg.width >> (halvings - i))
            for stride in (2, 1):
                layers += [nn.Conv2d(c, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                c = out
        layers.append(nn.Conv2d(c, cfg.width, rest, stride=rest))
        super().__init__(*layers)


class PatchEmbed(nn.Module):
    """Embed each ``patch x patch`` patch as one token: the conv stem + position embedding.

    Not reversible (it changes the shape); both twins run it under ordinary autograd.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.image_size = cfg.image_size
        self.patch = cfg.patch
        self.proj = ConvStem(cfg)  # NOTE [ A ViT that SGD trains ]
        self.pos = PositionEmbedding(cfg.num_patches, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch or w % self.patch:
            raise ValueError(f"input size {h}x{w} is not divisible by the patch size {self.patch}")
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(f"input size {h}x{w} differs from the model's image_size {self.image_size} "
                             "(its position embedding has one entry per patch); build it with image_size="
                             f"{h}" if h == w else f"input size {h}x{w} is not square")
        x = self.proj(x)  # (B, D, H/p, W/p)
        return self.pos(x.flatten(2).transpose(1, 2))  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention: qkv projection, scaled_dot_product_attention, output projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d/h)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, N, d/h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def extra_repr(self) -> str:
        return f"heads={self.heads}"


def make_attention_branch(width: int, heads: int) -> nn.Sequential:
    """``LN + Attention``: the first residual function of a block (F of a Rev-ViT coupling)."""
    return nn.Sequential(nn.LayerNorm(width), Attention(width, heads))


def make_mlp_branch(width: int, mlp_ratio: int) -> nn.Sequential:
    """``LN + Linear(D, rD) + GELU + Linear(rD, D)``: the second residual function (G)."""
    return nn.Sequential(
        nn.LayerNorm(width), nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
    )


class ViTBlock(nn.Module):
    """A pre-norm transformer block: ``x = x + attn(x); x = x + mlp(x)`` (LayerNorms inside)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.attn = make_attention_branch(cfg.width, cfg.heads)
        self.mlp = make_mlp_branch(cfg.width, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class TokenHead(nn.Module):
    """BatchNorm over the tokens, mean over the tokens, Linear: (B, N, D) -> (B, num_classes).

    The BatchNorm normalises each feature over the batch and the tokens (NOTE [ A ViT that SGD
    trains ]).
    """

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.transpose(1, 2)).mean(dim=2))  # (B, D, N) -> (B, D) -> (B, classes)


def _init_weights(model: nn.Module) -> None:
    # ViT's usual initialisation (as in timm's and DeiT's): truncated normal(0.02) for every
    # Linear, zero biases, except that the query, key and value projections are each Xavier-uniform
    # on their own (D, D) block, as in the original JAX ViT (NOTE [ A ViT that SGD trains ]); norms
    # at weight 1, bias 0 and the stem's convolutions as PyTorch initialises them.
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, Attention):
            for block in m.qkv.weight.detach().chunk(3, dim=0):  # q, k, v: (D, D) each
                nn.init.xavier_uniform_(block)


class ViT(nn.Sequential):
    """The pre-norm ViT: children ``patch_embed``, ``blocks`` (an ``nn.Sequential``), ``head``."""

    def __init__(self, cfg: ViTConfig, num_classes: int = 10) -> None:
        check_vit_config(cfg)
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.Sequential(*(ViTBlock(cfg) for _ in range(cfg.depth)))
        self.head = TokenHead(cfg.width, num_classes)
        _init_weights(self)


# NOTE [ Two streams from one embedding ]
# Rev-ViT feeds the patch embedding to both streams (X1 = X2 = embed(x)): the sequence's input
# is cat([e, e], dim=2), (B, N, 2D), split back along the features by each coupling. The
# streams are merged by their mean before the head, which is the ViT's, so that both models
# have the same parameters per block and the same head (and the same state-dict shapes). The
# embedding, the merge and the head are not reversible and store what they need (the head's
# LayerNorm keeps the merged (B, N, D)); everything between them is rebuilt in backward from
# the sequence's output, the one (B, N, 2D) tensor autograd keeps for the blocks.


class RevViT(nn.Module):
    """Rev-ViT: children ``patch_embed``, ``blocks`` (one ReversibleSequence of couplings), ``head``."""

    def __init__(self, cfg: ViTConfig, num_classes: int = 10) -> None:
        check_vit_config(cfg)
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = ReversibleSequence(
            AdditiveCoupling(make_attention_branch(cfg.width, cfg.heads), make_mlp_branch(cfg.width, cfg.mlp_ratio),
                             split_dim=2)
            for _ in range(cfg.depth)
        )
        self.head = TokenHead(cfg.width, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.patch_embed(x)  # (B, N, D)
        y = self.blocks(torch.cat([e, e], dim=2))  # (B, N, 2D): NOTE [ Two streams from one embedding ]
        y1, y2 = y.chunk(2, dim=2)
        return self.head((y1 + y2) * 0.5)


def _config(options: Mapping[str, Any]) -> ViTConfig:
    known = set(ViTConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown ViT option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    return check_vit_config(replace(VIT_CFGS["tiny"], **options))


def _input_shape(options: Mapping[str, Any]) -> tuple[int, int, int]:
    cfg = _config(options)
    return (cfg.in_channels, cfg.image_size, cfg.image_size)  # (C, H, W)


@register_model(
    "vit",
    table_depth=2,
    check_options=_config,
    options_input_shape=_input_shape,
    description="pre-norm ViT for 32x32 inputs: conv stem of stride 4 (4x4 patches), 192 wide, 12 deep, 3 heads, BatchNorm head (5,518,618 parameters)",
)
def vit(num_classes: int = 10, **options: Any) -> ViT:
    """A standard pre-norm Vision Transformer for CIFAR-sized (3, 32, 32) inputs.

    Args:
        num_classes: classifier outputs.
        **options: any field of :class:`ViTConfig`: ``width`` (default 192), ``depth`` (12),
            ``heads`` (3), ``patch`` (4), ``mlp_ratio`` (4), ``image_size`` (32),
            ``in_channels`` (3).

    Returns:
        The model: children ``patch_embed``, ``blocks`` (``depth`` :class:`ViTBlock`), ``head``.

    Raises:
        memprof.errors.UsageError: for an unknown option, a width not divisible by the heads,
            or an image size not divisible by the patch.
    """
    return ViT(_config(options), num_classes)


@register_model(
    "revvit",
    table_depth=3,
    check_options=_config,
    options_input_shape=_input_shape,
    description="Rev-ViT, vit's reversible twin: two streams, Y1 = X1 + Attn(LN(X2)), Y2 = X2 + MLP(LN(Y1))",
)
def revvit(num_classes: int = 10, **options: Any) -> RevViT:
    """Rev-ViT: the ``vit`` with its blocks as reversible couplings on two streams.

    Each block is an :class:`AdditiveCoupling` on a (B, N, 2 * width) tensor split along the
    features: ``Y1 = X1 + Attn(LN(X2))``, ``Y2 = X2 + MLP(LN(Y1))``; all ``depth`` of them form
    one :class:`ReversibleSequence`, so a training step keeps the sequence's output and
    rebuilds every block's input in backward. Same parameters as ``vit`` with the same options
    (NOTE [ Two streams from one embedding ]); ``get_model("revvit", reversible=False)`` is the
    plain-autograd twin with the same state dict.

    Args:
        num_classes: classifier outputs.
        **options: as for :func:`vit`.

    Returns:
        The model: children ``patch_embed``, ``blocks`` (a ReversibleSequence), ``head``.

    Raises:
        memprof.errors.UsageError: as for :func:`vit`.
    """
    return RevViT(_config(options), num_classes)
