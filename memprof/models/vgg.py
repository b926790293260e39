"""VGG-19 and the deck's Rev-VGG for 32x32 inputs, built from one configuration table.

Config table -> layer builders -> model classes -> one-line registered builders, as in
torchvision's and timm's ``vgg.py``. ``CFGS["E"]`` is VGG-19; Rev-VGG (and the fully invertible
variant in :mod:`memprof.models.irevvgg`) take their stage widths from the same row.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..reversible import AdditiveCoupling, ReversibleSequence
from ..validation import check_vgg_options
from .registry import register_model

__all__ = [
    "CFGS",
    "RevBlock",
    "RevVGG",
    "SEED_DESIGN_NOTES",
    "VGG",
    "make_coupling_branch",
    "make_linear_branch",
    "make_vgg_layers",
    "zero_init_last",
    "revvgg",
    "stage_widths",
    "vgg19",
]

#: VGG configurations: output channels of each 3x3 convolution, "M" for a 2x2 max-pool.
CFGS: dict[str, list[int | str]] = {
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}

#: Couplings per RevBlock: three reproduce the deck's RevBlock parameter column exactly.
REV_COUPLINGS = 3
#: Couplings in Rev-VGG's reversible linear block.
LINEAR_COUPLINGS = 2


def stage_widths(cfg: list[int | str]) -> list[int]:
    """The channel width of each stage (the convolutions between two max-pools) of a config."""
    widths: list[int] = []
    stage: list[int] = []
    for v in cfg:
        if v == "M":
            if not stage or len(set(stage)) != 1:
                raise ValueError(f"config stage {stage} must be non-empty and of one width")
            widths.append(stage[0])
            stage = []
        else:
            stage.append(int(v))
    return widths


def make_vgg_layers(cfg: list[int | str], in_channels: int = 3) -> nn.Sequential:
    """VGG's feature extractor: per width, conv3x3 (bias) + BatchNorm2d + ReLU(inplace); "M" pools."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out = int(v)
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
    return nn.Sequential(*layers)


# NOTE [ Why VGG-19 starts slowly ]
# Measured on digits (batch 64, the deck's lr 0.1, momentum 0.9, weight decay 5e-4), three causes:
# - The convolutions' initialisation. PyTorch's default (kaiming_uniform, a = sqrt(5): weight std
#   1/sqrt(3 fan_in)) is sqrt(6) = 2.45 times smaller than He's. Each conv is followed by a
#   BatchNorm, so its output ignores the weight's scale but its gradient grows as 1/|w|: on the
#   first batch lr * |g| / |w| is 0.126 for the second conv (times about 10 with the momentum), so
#   a step moves the weights by more than their norm. torchvision's initialisation (kaiming_normal,
#   fan_out, ReLU gain, zero bias; BatchNorm weight 1, bias 0, PyTorch's default) is used: 23 steps
#   without warm-up then reach batch accuracies of 0.4-0.6 (loss 1.2-1.7) instead of 0.16 (2.2-2.4).
# - The classifier's ReLUs die. Its input is ReLU'd and max-pooled, never centred: on a digits
#   batch its mean has |mean|^2 = 620 against 22 for the top eigenvalue of the centred covariance.
#   Along that mean, which carries no class information, the curvature is large (for Rev-VGG's fc
#   on such an input, curvature times lr 0.1 was past heavy-ball's stability bound: NOTE
#   [ Normalisation in the main stream ]), and the updates it drives push the hidden Linears'
#   units below zero for every image. With PyTorch's BatchNorm weight of 1, after epochs 1 / 3 / 5
#   of the recipe 49% / 82% / 87% of the first hidden layer's 512 units output 0 on the whole last
#   batch, training accuracy is 26% / 52% / 65% and test accuracy 10% / 63% / 73%
#   (`notes/vgg19_classifier_probe.py 1 0 5`): the classifier learns through the units left.
#   Fix, in the deck's architecture and counts: the last BatchNorm's weight starts at
#   CLASSIFIER_INPUT_GAIN = 0.2 instead of 1 (the builder option ``classifier_input_gain``), so
#   the classifier's input starts 5 times smaller, |mean|^2 about 0.04 x 620 = 25, the centred
#   spectrum's scale. The same probe with GAIN 0.2: 16% / 13% / 13% dead, training accuracy
#   20% / 73% / 91%, test 10% / 82% / 89%. The weight is a trained parameter, free to grow.
#   Tried and not kept: the Linears' initialisation (He's for the two hidden Linears makes the
#   head unstable, loss 2.7 -> 4.0 over 46 steps; torchvision's N(0, 0.01) starts the logits at
#   std 0.006 and the loss stays at ln 10 for 23 steps; Xavier's, 26% training accuracy after two
#   epochs), a zero last Linear and a first-Linear bias that centres its pre-activations at the
#   start (in a scratch loop under a one-epoch warm-up, 81% and 77% of the first hidden layer
#   dead after four epochs, test 54% and 16%, where gain 0.2 had 12% and 81%): none shrinks the mean.
# - Eval-mode BatchNorm statistics lag while lr is 0.1: with the weight of 1 and a one-epoch
#   warm-up, test accuracy 10% after epochs 1 and 2 (test loss 27.7 and 24.5) at training
#   accuracies of 26% and 34%; after 23 steps 10.0% with the
#   running statistics, 16.9% with batch statistics, 17.2% with re-estimated ones
#   (notes/bn_eval_probe.py). They catch up once the learning rate drops.
# With all of this and the recipe of reports/training.md (the deck's: 15 epochs, lr / 10 after
# epochs 5 and 10, no warm-up) VGG-19 reaches 95% at epoch 6 and 99.4% / 98.9% at epoch 15 with
# seeds 0 / 1; with --model-option classifier_input_gain=1, the same runs' control, 76.1% (its
# training accuracy fell from 70% to 41% in epoch 5) and 95.3% (95% first at epoch 11). Under a
# one-epoch warm-up the weight of 1 reached 92.5% (seed 0), and a three-epoch warm-up 98.3% with
# seed 0 but 88.6% with seed 1: no warm-up setting made the weight of 1 reliable.
# The parameter and activation counts do not change with the initialisation.


def init_vgg_convs(features: nn.Module) -> None:
    """torchvision's VGG convolution initialisation: kaiming_normal (fan_out, ReLU), zero bias."""
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


#: Initial weight of VGG-19's last BatchNorm, whose ReLU'd, max-pooled output is the classifier's
#: input (NOTE [ Why VGG-19 starts slowly ]).
CLASSIFIER_INPUT_GAIN = 0.2


def init_classifier_input_gain(features: nn.Module, gain: float = CLASSIFIER_INPUT_GAIN) -> None:
    """Start the weight of the last BatchNorm in ``features`` at ``gain`` instead of 1."""
    last = [m for m in features.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)][-1]
    nn.init.constant_(last.weight, gain)


class VGG(nn.Module):
    """VGG with batch norm for 32x32 inputs: ``features`` (leaf layers) then ``classifier``.

    The feature map after the fifth pool is (512, 1, 1); it is flattened functionally (no
    module, hence no table row, as in the deck) and fed to Linear 512-512-512-num_classes.
    """

    def __init__(self, cfg: list[int | str], num_classes: int = 10,
                 classifier_input_gain: float = CLASSIFIER_INPUT_GAIN) -> None:
        super().__init__()
        width = stage_widths(cfg)[-1]
        self.features = make_vgg_layers(cfg)
        self.classifier = nn.Sequential(
            nn.Linear(width, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        init_vgg_convs(self.features)
        init_classifier_input_gain(self.features, classifier_input_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, 1, 1) for a 32x32 input
        return self.classifier(torch.flatten(x, 1))


# NOTE [ Couplings start as the identity ]
# Each coupling adds F(x2) and G(y1) to the stream. With default initialisation every branch
# ends in a BatchNorm of unit variance, so the stream's variance grows by about 2 per coupling,
# the logits start far from uniform (first loss 3.37 instead of ln 10 = 2.30 for revvgg), and
# SGD with the deck's learning rate 0.1 and momentum 0.9 diverges within three steps (measured:
# loss 3.3 -> 173 -> 2e9 -> nan at batch 64). Initialising the weight of each branch's last
# BatchNorm (or Linear) to zero makes every coupling the identity at the start, as the
# zero-init-residual trick does for ResNets (Goyal et al. 2017): the same run then stays at
# 2.3. The weights leave zero after the first step; nothing else about the model changes.


def zero_init_last(branch: nn.Sequential) -> nn.Sequential:
    """Zero the weight of the branch's last BatchNorm or Linear, so the branch starts at 0 + bias."""
    last = [m for m in branch if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Linear))][-1]
    nn.init.zeros_(last.weight)
    if isinstance(last, nn.Linear) and last.bias is not None:
        nn.init.zeros_(last.bias)
    return branch


def make_coupling_branch(channels: int) -> nn.Sequential:
    """F or G of a convolutional coupling: conv3x3 + BN + ReLU + conv3x3 + BN, shape-preserving.

    The convolutions have no bias (each is followed by a BatchNorm, which has one).
    """
    return zero_init_last(
        nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
    )


def make_linear_branch(features: int) -> nn.Sequential:
    """F or G of a fully connected coupling: Linear + ReLU + Linear, shape-preserving."""
    return zero_init_last(
        nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, features))
    )


# NOTE [ Normalisation in the main stream ]
# The couplings normalise inside F and G, but nothing normalised the stream they add to: the
# stem conv, the transition convs and the fully connected couplings saw whatever scale the
# previous stage produced, and each coupling adds to it. Trained with the deck's recipe (lr 0.1,
# momentum 0.9) on real data (scikit-learn's digits), Rev-VGG and its plain twin alike reached
# a NaN loss in the second epoch, even at lr 0.05: an architectural problem, not the engine's.
# The fix is the one RevNets and pre-activation ResNets use at their non-reversible joints:
# - each RevBlock starts with a BatchNorm of its input (``norm``), before the transition conv:
#   every stage then starts from a normalised stream, whatever the previous stage's couplings
#   added. Before the conv rather than after it because the pooled input has half the channels
#   of the conv's output: the BatchNorm and the conv then each keep a (c_in, H, W) tensor for
#   backward, where conv + BatchNorm would keep (c_in, H, W) and (c_out, H, W). It adds 2 c_in
#   parameters to each RevBlock (+128 / +256 / +512 / +1,024, at most 0.025% of its count).
# - the linear block's input is normalised too: ``norm5``, a BatchNorm2d(512) of revblock4's
#   (512, 2, 2) output, before pool5. (A BatchNorm1d after the flatten would see one value per
#   channel at batch 1 and refuse to train there; on the 2x2 map it sees four. Average-pooling
#   commutes with the per-channel affine map of an evaluation-mode BatchNorm, so the two places
#   compute the same function in evaluation.)
# - pool5 averages instead of taking the deck's maximum. With a max-pool after norm5 the linear
#   block and fc saw max-pooled BatchNorm outputs, which are not centred: on a digits batch fc's
#   input had |mean|^2 = 570, so the top curvature of the softmax layer, about 0.1 x 575, times
#   lr 0.1 is 5.7, past heavy-ball's stability bound 2 (1 + momentum) = 3.8. With the deck's
#   recipe (no warm-up) the loss climbed from step 2 and was NaN at step 17, and seed 1 reached
#   a NaN loss within its first epoch (`memprof train --dataset digits --model revvgg --seed 1`
#   with the settings of reports/training.md); a one-epoch linear warm-up let seed 0 train
#   (99.7% test accuracy after 15 epochs). The average of BatchNorm outputs is centred over the
#   batch: in a probe of seed 1 (the first 23 steps, under a one-epoch warm-up) fc's input has
#   |mean|^2 = 0.0 at the start (the linear block starts as the identity) and 0.3 at step 23,
#   where the max-pool's had 570 and 199, with the top eigenvalue of the centred covariance
#   alike (37-133 against 54-113). Both seeds and both twins of each now train with the deck's
#   recipe, without a warm-up (reports/training.md). No parameter changes; the row keeps the
#   deck's (512, 1, 1) output and 512 activations, and autograd no longer keeps the max-pool's
#   int64 indices (0.50 MiB at batch 128).
# The stem keeps the deck's conv + ReLU: revblock1's BatchNorm normalises its pooled output
# before any coupling adds to it. A BatchNorm right after the stem conv would keep the conv's
# (64, 32, 32) output for backward, 256 KiB per sample, the largest tensor of the network.
# The couplings keep starting as the identity (NOTE [ Couplings start as the identity ]).


#: Why memprof's Rev-VGG differs from the deck's table, by row name (digits stripped): shown in
#: the seed comparison of ``memprof table revvgg --seed-table`` and reports/revvgg.md.
SEED_DESIGN_NOTES: dict[str, str] = {
    "revblock": "a BatchNorm2d of the block's input before the transition conv (2 x in_channels parameters), "
                "so that Rev-VGG trains with the deck's lr 0.1 (NOTE [ Normalisation in the main stream ])",
    "norm": "a BatchNorm2d of revblock4's output before pool5 and the linear block, so that Rev-VGG trains "
            "with the deck's lr 0.1 (NOTE [ Normalisation in the main stream ])",
    "pool": "pool5 averages the BatchNorm'd 2x2 map instead of taking its maximum, so that the linear block and fc "
            "see centred inputs and lr 0.1 stays stable (NOTE [ Normalisation in the main stream ])",
    "linear_block": "two couplings with F, G = Linear(256, 256) + ReLU + Linear(256, 256); the deck's count is "
                    "that of the two Linear(512, 512) they replace",
}


class RevBlock(nn.Module):
    """Rev-VGG's RevBlock: BatchNorm, a channel-changing ``transition`` conv, then reversible ``couplings``.

    Args:
        in_channels: channels entering the block.
        out_channels: channels leaving it (even: the couplings split them in halves).
        num_couplings: additive couplings after the transition.
    """

    def __init__(self, in_channels: int, out_channels: int, num_couplings: int = REV_COUPLINGS) -> None:
        super().__init__()
        half = out_channels // 2
        self.norm = nn.BatchNorm2d(in_channels)  # NOTE [ Normalisation in the main stream ]
        self.transition = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.couplings = ReversibleSequence(
            AdditiveCoupling(make_coupling_branch(half), make_coupling_branch(half))
            for _ in range(num_couplings)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE [ No activation between the transition and the couplings ]
        # The transition's output goes straight into the couplings. A ReLU there would keep its
        # output for backward (an in-place ReLU saves its result), and that output is exactly
        # the couplings' input, which the reversible sequence exists not to store: about 60k
        # extra activations per sample over the four blocks (+0.08 of VGG-19's saved bytes).
        # The couplings' F and G carry the nonlinearity; the transition is a linear change of
        # width, like the projection shortcut of a ResNet stage.
        return self.couplings(self.transition(self.norm(x)))

    def extra_repr(self) -> str:
        return f"{self.transition.in_channels}->{self.transition.out_channels}, couplings={len(self.couplings)}"


class RevVGG(nn.Sequential):
    """The deck's Rev-VGG; its top-level children are the rows of the deck's "Rev-VGG Details"."""


def _build_revvgg(cfg: list[int | str], num_classes: int) -> RevVGG:
    widths = stage_widths(cfg)  # [64, 128, 256, 512, 512] for "E"
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(3, widths[0], 3, padding=1)
    layers["relu"] = nn.ReLU(inplace=True)
    layers["pool1"] = nn.MaxPool2d(2, 2)
    for k, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layers[f"revblock{k}"] = RevBlock(c_in, c_out)
        if k == len(widths) - 1:
            layers[f"norm{k + 1}"] = nn.BatchNorm2d(c_out)  # NOTE [ Normalisation in the main stream ]
            layers[f"pool{k + 1}"] = nn.AvgPool2d(2, 2)  # centred for the linear block (same NOTE)
        else:
            layers[f"pool{k + 1}"] = nn.MaxPool2d(2, 2)
    width = widths[-1]
    layers["flatten"] = nn.Flatten(1)
    layers["linear_block"] = ReversibleSequence(
        AdditiveCoupling(make_linear_branch(width // 2), make_linear_branch(width // 2), split_dim=1)
        for _ in range(LINEAR_COUPLINGS)
    )
    layers["fc"] = nn.Linear(width, num_classes)
    return RevVGG(layers)


@register_model(
    "vgg19",
    table_depth=2,
    description="VGG-19 with batch norm for 32x32 inputs (20,565,834 parameters)",
    check_options=check_vgg_options,
)
def vgg19(num_classes: int = 10, classifier_input_gain: float = CLASSIFIER_INPUT_GAIN) -> VGG:
    """VGG-19 with batch norm for CIFAR-sized (3, 32, 32) inputs.

    Configuration "E": convolutions 2-2-4-4-4 with 64-128-256-512-512 channels, each a 3x3
    convolution with bias + BatchNorm2d + ReLU(inplace), a 2x2 max-pool after each stage, and
    the classifier Linear 512-512-512-num_classes with ReLUs (no dropout: the deck lists none).
    With 10 classes it has exactly 20,565,834 parameters, the deck's total.

    Args:
        num_classes: classifier outputs.
        classifier_input_gain: the initial weight of the last BatchNorm, whose ReLU'd, max-pooled
            output the classifier reads (NOTE [ Why VGG-19 starts slowly ]; PyTorch's default is 1).

    Returns:
        The model, with children ``features`` (a Sequential of leaf layers) and ``classifier``.
    """
    return VGG(CFGS["E"], num_classes, classifier_input_gain)


@register_model(
    "revvgg",
    table_depth=1,
    description="the deck's Rev-VGG: stem, 4 RevBlocks of additive couplings, reversible linear block",
)
def revvgg(num_classes: int = 10) -> RevVGG:
    """The deck's Rev-VGG, with the stage widths of VGG-19's configuration "E".

    Children, matching the rows of the deck's "Rev-VGG Details" table: ``conv`` (3->64, 3x3,
    bias: 1,792), ``relu``, ``pool1``, then ``revblock1..4`` (64->128->256->512->512) each
    followed by ``pool2..5`` (2x2 max-pools), ``flatten``, ``linear_block`` and ``fc``
    (Linear 512->num_classes: 5,130).

    A RevBlock (in -> out channels, c = out/2) is a transition Conv2d(in, out, 3x3, no bias)
    followed by a ReversibleSequence of 3 additive couplings whose F and G are each
    conv3x3(c, c, no bias) + BN(c) + ReLU + conv3x3(c, c, no bias) + BN(c). Its parameters are
    9*in*out + 6*(18c^2 + 4c): 517,632 / 2,067,456 / 8,263,680 / 9,443,328, exactly the deck's
    RevBlock column (so this is, by its counts, the design the deck used). No activation sits
    between the transition and the couplings (see NOTE [ No activation between the transition
    and the couplings ]); the deck does not say.

    The linear block is a ReversibleSequence of 2 additive couplings on the 512 features
    (split 256/256), F and G each Linear(256, 256) + ReLU + Linear(256, 256): 526,336
    parameters. The deck's 525,312 is the count of two Linear(512, 512), the VGG-19 classifier
    layers it replaces, not of a reversible block; ours differs by +1,024 (+0.19%), a design
    difference. Total with 10 classes: 20,825,354 (deck: 20,824,330).

    The max-pools are not invertible, so only the couplings inside each RevBlock and the
    linear block run reversibly: the stem, transitions and pools store what they need.

    Args:
        num_classes: classifier outputs.

    Returns:
        The model (an ``nn.Sequential`` subclass with named children).
    """
    return _build_revvgg(CFGS["E"], num_classes)
