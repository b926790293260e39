"""i-Rev-VGG: the deck's "future work", Rev-VGG made invertible from the input to the head."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..reversible import AdditiveCoupling, ChannelZeroPad, InvertibleDownsample, ReversibleSequence
from .registry import register_model
from .vgg import CFGS, REV_COUPLINGS, stage_widths, zero_init_last

__all__ = ["IREVVGG_MIDS", "IRevVGG", "bottleneck_widths", "irevvgg", "make_bottleneck_branch"]

# NOTE [ Bottleneck widths ]
# Space-to-depth quadruples the channels at each stage (halves of 12, 48, 192, 768 channels),
# so F and G are bottlenecks whose inner width m is set per RevBlock from the VGG config:
# RevBlock k takes VGG-19's stage-k width (64, 128, 256, 512), halved for k = 1, giving
# 32, 128, 256, 512: the 3x3 convolutions of stages 2-4 have the width of VGG's. RevBlock 1
# is halved because the peak of a reversible training step is the recomputation of one
# coupling's F or G in backward, whose m-channel intermediates (two conv outputs, two
# BatchNorm outputs) live beside the rebuilt halves, and RevBlock 1 has the largest maps
# (16x16). Every intermediate is then at most 8,192 elements per sample (32 x 16 x 16,
# 128 x 8 x 8, 256 x 4 x 4, 512 x 2 x 2). Measured on the CPU at batch 32 (allocation events
# of torch.profiler, gradients excluded), m = 64 in RevBlock 1 raises the activation peak of a
# training step from 0.146 to 0.171 of VGG-19's; m = 256 in RevBlock 4 (Rev-VGG's half width)
# would drop 13M parameters, leaving 11M, below Rev-VGG's range.


def bottleneck_widths(cfg: list[int | str]) -> tuple[int, ...]:
    """The inner width m of F and G in each RevBlock (NOTE [ Bottleneck widths ])."""
    widths = stage_widths(cfg)  # [64, 128, 256, 512, 512] for "E"
    return (widths[0] // 2, *widths[1:-1])


#: Inner width of the bottleneck F and G of each RevBlock of ``irevvgg``.
IREVVGG_MIDS = bottleneck_widths(CFGS["E"])


def make_bottleneck_branch(channels: int, mid: int) -> nn.Sequential:
    """F or G of a wide coupling: conv1x1 c->m + BN + ReLU + conv3x3 m->m + BN + ReLU + conv1x1 m->c + BN.

    Shape-preserving; the convolutions have no bias (each is followed by a BatchNorm); the last
    BatchNorm's weight starts at zero (NOTE [ Couplings start as the identity ] in vgg.py).
    """
    return zero_init_last(nn.Sequential(
        nn.Conv2d(channels, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
    ))


class IRevVGG(nn.Sequential):
    """i-Rev-VGG: an invertible ``body`` (one ReversibleSequence) and a small non-invertible head."""


def _build_irevvgg(
    cfg: list[int | str],
    num_classes: int,
    in_channels: int = 3,
    mids: tuple[int, ...] | None = None,
) -> IRevVGG:
    mids = bottleneck_widths(cfg) if mids is None else mids
    # NOTE [ Zero padding that no weight reads ]
    # The stem pads the input with as many zero channels as it has (3 -> 6) and applies
    # space-to-depth: (6, 32, 32) -> (24, 16, 16), whose first half holds the 12 real channels
    # and whose second half is all zeros. The first coupling is NICE's (F=None): y1 = x1 and
    # y2 = 0 + G(x1), so G reads only real channels and fills the zeros with features of the
    # input, as i-RevNet's injective padding intends. No F or G ever reads a padded zero.
    # This matters: in backward the zeros are rebuilt by subtraction, to within rounding
    # (1e-7), and weights reading them would get that noise as gradient, where the plain
    # network gives exactly 0 (and a BatchNorm over an all-zero channel would amplify it by
    # 1/sqrt(eps)). Padding further to VGG's 64 channels at 16x16 would put zeros in both
    # halves, so some F or G would read them.
    channels = 2 * in_channels * 4
    blocks: list[nn.Module] = [
        ReversibleSequence([ChannelZeroPad(in_channels), InvertibleDownsample(2)])
    ]
    for k, mid in enumerate(mids, start=1):
        if k > 1:
            blocks.append(InvertibleDownsample(2))  # replaces Rev-VGG's pool{k}
            channels *= 4
        half = channels // 2
        couplings = [
            AdditiveCoupling(
                None if (k == 1 and i == 0) else make_bottleneck_branch(half, mid),
                make_bottleneck_branch(half, mid),
            )
            for i in range(REV_COUPLINGS)
        ]
        blocks.append(ReversibleSequence(couplings))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["body"] = ReversibleSequence(blocks)
    # NOTE [ The head normalises the body's output ]
    # The body's output is a sum of the input and every coupling's F and G, which nothing
    # normalises, and after a ReLU (i-RevNet's head is BatchNorm + ReLU) it is never centred:
    # the classifier's input then has a large mean shared by every image, whose curvature
    # bounds SGD's learning rate while the class directions learn slowly (as for VGG-19, NOTE
    # [ Why VGG-19 starts slowly ] in vgg.py). With ReLU + pooling + Linear, the deck's recipe
    # (lr 0.1, momentum 0.9, a one-epoch warm-up) reached 60% on digits after 8 epochs; with a
    # BatchNorm and no ReLU the pooled features are centred over the batch, and the recipe of
    # reports/training.md (15 epochs) reaches 95% at epoch 6 and 98.6% at the end. The BatchNorm is out of place
    # and saves its input, the body's output, which autograd keeps for the body's reversible
    # backward anyway: the head adds no body-sized tensor (the ReLU kept its own output, one).
    # Nothing may modify the body's output in place: it is the tensor the body's backward
    # starts from, and autograd would refuse it once its version moved.
    layers["norm"] = nn.BatchNorm2d(channels)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten(1)
    layers["fc"] = nn.Linear(channels, num_classes)
    return IRevVGG(layers)


@register_model(
    "irevvgg",
    table_depth=3,
    description="fully invertible Rev-VGG (i-RevNet style): one reversible body, BatchNorm + GAP + linear head",
)
def irevvgg(num_classes: int = 10) -> IRevVGG:
    """The deck's "future work": Rev-VGG made fully invertible up to the classifier head.

    i-RevNet style (Jacobsen et al. 2018): max-pooling, which discards three quarters of its
    input, is replaced by lossless space-to-depth (:class:`InvertibleDownsample`), and the stem
    conv by zero channel padding (:class:`ChannelZeroPad`). Everything from the input to the
    head is one ReversibleSequence, ``body``, whose blocks (themselves sequences, grouped like
    the deck's rows) are::

        blocks.0  stem       pad 3->6 channels at 32x32, space-to-depth    -> (24, 16, 16)
        blocks.1  revblock1  3 couplings, halves 12,  bottleneck 32          (24, 16, 16)
        blocks.2  down2      space-to-depth                                 -> (96, 8, 8)
        blocks.3  revblock2  3 couplings, halves 48,  bottleneck 128         (96, 8, 8)
        blocks.4  down3      space-to-depth                                 -> (384, 4, 4)
        blocks.5  revblock3  3 couplings, halves 192, bottleneck 256         (384, 4, 4)
        blocks.6  down4      space-to-depth                                 -> (1536, 2, 2)
        blocks.7  revblock4  3 couplings, halves 768, bottleneck 512         (1536, 2, 2)

    Elements per sample are constant after the stem's padding: 6 x 32 x 32 = 6,144 at every
    stage, since space-to-depth trades resolution for channels one for one and couplings
    preserve shape. Autograd keeps only the body's output; backward rebuilds every stage from
    it, one coupling at a time, so what a training step holds does not grow with depth. At
    batch 128 autograd saves 3.76 MiB after the forward (the body's output and the pooled
    features), against 343.79 MiB for VGG-19 and 123.76 MiB for Rev-VGG.
    The first coupling has no F (NOTE [ Zero padding that no weight reads ]).

    F and G are bottlenecks, conv1x1 c->m + BN + ReLU + conv3x3 m->m + BN + ReLU + conv1x1 m->c
    + BN, with c the half width and m = 32, 128, 256, 512 (NOTE [ Bottleneck widths ]).
    Parameters (10 classes): revblock1 50,680 (5 branches); revblock2 962,112; revblock3
    4,137,216; revblock4 18,895,872; head BatchNorm2d(1536) 3,072 and Linear(1536, 10) 15,370;
    total 24,064,322 (the stem and the downsamplings have none). Rev-VGG has 20,828,298.

    The head is not invertible, nor needs to be: BatchNorm (NOTE [ The head normalises the
    body's output ]) + global average pooling over the 2x2 map + Linear. It
    replaces the deck's pool5 and linear block: a reversible linear block on the 6,144
    features of a fifth space-to-depth would cost 3,072^2 weights per linear layer.

    Args:
        num_classes: classifier outputs.

    Returns:
        The model: children ``body``, ``norm``, ``pool``, ``flatten``, ``fc``.
    """
    return _build_irevvgg(CFGS["E"], num_classes)
