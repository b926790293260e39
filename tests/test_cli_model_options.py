"""``--model-option NAME=VALUE``: a registered model's builder options on every verb that takes one.

The names and types are checked without torch against :data:`memprof.vocabulary.MODEL_OPTIONS`;
the builder's own check (:func:`memprof.models.registry.check_model_options`: a ViT width
divisible by its heads) runs before anything is built. Every bad input is one line and exit 2.
"""

from __future__ import annotations

import csv
import json

import pytest

import memprof
from memprof.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_revvit_depth_6_has_6_blocks(capsys):
    code, out, err = run(["table", "revvit", "--model-option", "depth=6", "--batch-size", "2"], capsys)
    assert code == 0, err
    assert out.startswith("memprof table revvit (depth=6): batch 2")
    blocks = {line.split()[0] for line in out.splitlines() if line.startswith("blocks.blocks.")}
    assert blocks == {f"blocks.blocks.{i}" for i in range(6)}


def test_table_options_change_the_model(capsys):
    def totals(*options: str) -> dict:
        argv = ["table", "vit", "--batch-size", "2", "--format", "json"]
        for option in options:
            argv += ["--model-option", option]
        code, out, err = run(argv, capsys)
        assert code == 0, err
        return json.loads(out)

    default, wide = totals("depth=2"), totals("depth=2", "width=384", "heads=6")
    assert wide["totals"]["params"] > 3 * default["totals"]["params"]
    big = totals("depth=1", "image_size=64", "patch=8")  # the input shape follows image_size
    assert big["rows"][0]["input_shape"] == [3, 64, 64]
    plain = json.loads(memprof.layer_table("revvgg", batch_size=2, model_options={"reversible": False}).to_json())
    rev = json.loads(memprof.layer_table("revvgg", batch_size=2).to_json())
    assert plain["totals"]["params"] == rev["totals"]["params"]
    assert plain["totals"]["saved_bytes"] > 1.5 * rev["totals"]["saved_bytes"]  # the twin stores its activations
    assert plain["seed"] is None  # the deck's table is for the model without options


def test_profile_names_the_options(capsys):
    code, out, err = run(["profile", "revvit", "--model-option", "depth=2", "--model-option", "width=96",
                          "--estimate", "--batch-size", "2", "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)["model"] == "revvit (depth=2, width=96)"


def test_sweep_builds_every_model_with_the_options(capsys, tmp_path):
    code, out, err = run(["sweep", "--models", "vit,revvit", "--model-option", "depth=2", "--batch-sizes", "2",
                          "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "Every model built with depth=2." in out
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open(newline="")))
    assert [r["model"] for r in rows] == ["vit", "revvit"]
    assert "--model-option depth=2" in (tmp_path / "sweep.md").read_text(encoding="utf-8")


def test_compare_builds_every_strategy_with_the_options(capsys):
    code, out, err = run(["compare", "--family", "vit", "--model-option", "depth=2", "--no-time",
                          "--batch-size", "2", "--strategies", "plain,reversible"], capsys)
    assert code == 0, err
    assert "Every model built with depth=2" in out


@pytest.mark.parametrize("argv, needles", [
    (["table", "vgg19", "--model-option", "depth=6"], ["'vgg19'", "'depth'", "allowed: classifier_input_gain"]),
    (["table", "revvgg", "--model-option", "depth=6"], ["'revvgg'", "'depth'", "allowed: reversible"]),
    (["table", "vgg19", "--model-option", "classifier_input_gain=0"], ["classifier_input_gain", "positive number"]),
    (["train", "--model", "vgg19", "--model-option", "classifier_input_gain=x"], ["classifier_input_gain", "a number"]),
    (["table", "vit", "--model-option", "widht=3"], ["'widht'", "allowed: width, depth, heads"]),
    (["table", "vit", "--model-option", "width=100"], ["width 100", "heads 3"]),
    (["table", "vit", "--model-option", "depth=0"], ["depth='0'", "positive integer"]),
    (["table", "vit", "--model-option", "depth=x"], ["depth='x'", "positive integer"]),
    (["table", "vit", "--model-option", "depth"], ["'depth'", "NAME=VALUE"]),
    (["table", "vit", "--model-option", "depth=2", "--model-option", "depth=3"], ["'depth'", "twice"]),
    (["table", "revvgg", "--model-option", "reversible=maybe"], ["reversible='maybe'", "true or false"]),
    (["table", "tests.test_table:tiny_net", "--input-shape", "3,8,8", "--model-option", "depth=2"],
     ["registered model", "factory"]),
    (["profile", "vit", "--model-option", "width=100", "--estimate"], ["width 100", "heads 3"]),
    (["fit", "vgg19", "--model-option", "depth=2", "--memory", "1GiB"], ["'vgg19'", "'depth'"]),
    (["sweep", "--models", "vgg19,revvit", "--model-option", "depth=2"], ["'vgg19'", "'depth'"]),
    (["sweep", "--models", "vit,revvit", "--model-option", "heads=5"], ["width 192", "heads 5"]),
    (["compare", "--model-option", "depth=2"], ["'vgg19'", "'depth'"]),
    (["compare", "--family", "vit", "--model-option", "reversible=false"], ["'reversible'", "allowed: width"]),
], ids=["vgg19-unknown", "revvgg-unknown", "gain-not-positive", "train-gain-not-a-number", "unknown-name",
        "width-heads", "zero", "not-a-number", "no-value", "twice", "bool",
        "factory", "profile", "fit", "sweep-one-model", "sweep-heads", "compare-vgg", "compare-reversible"])
def test_bad_model_options_are_one_line_and_exit_2(argv, needles, capsys):
    code, out, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "", (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"memprof {argv[0]}: error:"), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_model_options_are_listed_in_help(capsys):
    for verb in ("table", "profile", "fit", "sweep", "compare"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--model-option NAME=VALUE" in out and "depth=12" in out and "heads=3" in out, verb
