"""The deck's tables held as data (seed): as published, slips included, never memprof's output."""

from __future__ import annotations

import math

from memprof.seed import SEED_TABLES, get_seed_table, parse_shape
from memprof.units import MiB


def test_rows_as_published() -> None:
    vgg, rev = SEED_TABLES["vgg19"], SEED_TABLES["revvgg"]
    assert len(vgg.rows) == 38 and len(rev.rows) == 12
    assert (vgg.params, vgg.activations, vgg.param_mib, vgg.activation_mib) == (20565834, 638474, 78.45, 311.75)
    assert (rev.params, rev.activations, rev.param_mib, rev.activation_mib) == (20824330, 105482, 79.43, 51.50)
    # the slips are kept: stage-4 conv input typo, the Rev-VGG max-pool count
    assert vgg.rows[19].input_shape == "(512,4,4)" and vgg.rows[19].in_channels == 256
    assert rev.rows[3].output_shape == "(128,8,8)" and rev.rows[3].activations == 16384
    assert get_seed_table("irevvgg") is None


def test_what_the_deck_adds_up() -> None:
    vgg, rev = SEED_TABLES["vgg19"], SEED_TABLES["revvgg"]
    # Rev-VGG: the printed totals are the sums of the printed rows.
    assert sum(r.params for r in rev.rows) == rev.params
    assert sum(r.activations for r in rev.rows) == rev.activations
    # VGG-19: the totals exceed the rows by one conv + BN pair of the (512,2,2) stage.
    assert vgg.params - sum(r.params for r in vgg.rows) == 2359808 + 1024
    assert vgg.activations - sum(r.activations for r in vgg.rows) == 2048 + 2048
    # The deck's "MB" are MiB; 79.43 is 79.4385 truncated (a rounding slip).
    assert round(vgg.params * 4 / MiB, 2) == vgg.param_mib
    assert round(vgg.activations * 4 * 128 / MiB, 2) == vgg.activation_mib
    assert round(rev.activations * 4 * 128 / MiB, 2) == rev.activation_mib
    assert round(rev.params * 4 / MiB, 2) == 79.44 != rev.param_mib
    # Every counted row's activations are the product of its output shape, but one.
    slips = [i + 1 for i, r in enumerate(rev.rows)
             if not r.layer.startswith(("RevBlock", "Linear block"))
             and math.prod(parse_shape(r.output_shape)) != r.activations]
    assert slips == [4]


def test_parse_shape() -> None:
    assert parse_shape("(512,4,4)") == (512, 4, 4)
    assert parse_shape("512") == (512,)
