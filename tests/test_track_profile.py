"""profile_step for any model: inputs of any kind and dtype, own loss, optimizers, autocast, accumulation.

For each real model (tiny configurations): the estimate equals the measurement in tensor-owned
bytes, and the categories at the peak add up to the peak.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from memprof.api.step import fit_batch_size, profile_step
from memprof.recording.user_step import InputSpec, parse_input_spec, resize_batch
from memprof.cli import main
from memprof.errors import UsageError
from tests.helpers import LSTMLM, Square


# ---- input specs ---------------------------------------------------------------------------
def test_parse_input_spec():
    assert parse_input_spec("input_ids:int64:128:50257") == InputSpec("input_ids", torch.int64, (128,), 0, 50257)
    assert parse_input_spec("x:float32:3,32,32") == InputSpec("x", torch.float32, (3, 32, 32))
    assert parse_input_spec("x:bfloat16:3x8x8").shape == (3, 8, 8)
    assert parse_input_spec("t:int32:4:5-9") == InputSpec("t", torch.int32, (4,), 5, 9)


@pytest.mark.parametrize("text, message", [
    ("ids", "does not parse"),
    ("ids:int65:4", "unknown dtype 'int65'"),
    ("x:float32:3:10", "integer inputs only"),
    ("t:int64:4:9-3", "empty range"),
    ("t:int64:0", "must be positive"),
])
def test_bad_input_spec(text, message):
    with pytest.raises(UsageError, match=message):
        parse_input_spec(text)


def test_resize_batch_repeats_and_cuts():
    x = {"a": torch.arange(6).reshape(3, 2), "b": torch.ones(3)}
    big = resize_batch(x, 7)
    assert big["a"].shape == (7, 2) and big["b"].shape == (7,)
    assert torch.equal(big["a"][3:6], x["a"])
    assert resize_batch(torch.zeros(5, 4), 2).shape == (2, 4)


# ---- real models ---------------------------------------------------------------------------
def _vision(builder: Callable[[], nn.Module], size: int) -> dict[str, Any]:
    return {"model": builder(), "batch_size": 2, "input_shape": (3, size, size)}


def resnet50():
    from torchvision.models import resnet50 as build

    return _vision(lambda: build(num_classes=10), 64)


def vit():
    from torchvision.models import VisionTransformer

    return _vision(lambda: VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                             mlp_dim=64, num_classes=10), 32) | {"optimizer": "adamw"}


def efficientnet_b0():
    from torchvision.models import efficientnet_b0 as build

    return _vision(lambda: build(num_classes=10), 32)


def timm_model():
    timm = pytest.importorskip("timm")
    return _vision(lambda: timm.create_model("resnet10t", pretrained=False, num_classes=10), 32)


def gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=32, vocab_size=512,
                                  bos_token_id=0, eos_token_id=0)
    return {"model": transformers.GPT2LMHeadModel(cfg), "batch_size": 2,
            "inputs": [parse_input_spec("input_ids:int64:32:512"), parse_input_spec("labels:int64:32:512")],
            "optimizer": "adamw", "optimizer_settings": {"weight_decay": 0.1},
            "autocast": "bfloat16", "accumulation_steps": 2}


def bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    # padded: an all-ones mask lets transformers drop it after looking at its values, which an
    # estimate (fake tensors, no values) cannot do: that step would differ by the mask's bytes
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[:, 12:] = 0
    example = {"input_ids": torch.randint(256, (1, 16)), "attention_mask": mask, "labels": torch.randint(3, (1,))}
    return {"model": transformers.BertForSequenceClassification(cfg), "batch_size": 3, "inputs": example,
            "optimizer": "adamw"}


def lstm_lm():
    def loss_fn(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    return {"model": LSTMLM(), "batch_size": 4, "inputs": torch.randint(100, (2, 16)), "loss_fn": loss_fn,
            "optimizer": lambda params: torch.optim.RMSprop(params, lr=1e-3)}


class _TwoInputs(nn.Module):
    """A model taking two tensors, one of them through a custom autograd.Function."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(8, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(Square.apply(self.a(x)) + self.b(z))


def custom_function():
    return {"model": _TwoInputs(), "batch_size": 4, "inputs": (torch.randn(1, 16), torch.randn(1, 8)),
            "optimizer": "adam"}


def reversible():
    from memprof.models import get_model

    return {"model": get_model("irevvgg"), "batch_size": 2, "input_shape": (3, 32, 32)}


CASES = {"resnet50": resnet50, "vit": vit, "efficientnet_b0": efficientnet_b0, "timm": timm_model, "gpt2": gpt2,
         "bert": bert, "lstm_lm": lstm_lm, "custom_function": custom_function, "reversible": reversible}


# The LSTM case holds because the estimate gives oneDNN's RNN layer its real workspace
# (DeviceKernels in memprof.recording.estimate): without it the estimate missed 380 KiB here.
@pytest.mark.parametrize("name", list(CASES))
def test_estimate_equals_measurement_in_tensor_owned_bytes(name):
    torch.manual_seed(0)
    kwargs = CASES[name]()
    model = kwargs.pop("model")
    measured = profile_step(model, **kwargs)
    estimated = profile_step(model, **kwargs, estimate=True)
    assert measured.attributed_peak_bytes == estimated.attributed_peak_bytes
    assert measured.activation_peak_bytes == estimated.activation_peak_bytes
    for prof in (measured, estimated):
        assert sum(prof.at_peak.values()) == prof.peak_bytes
        assert min(prof.at_peak.values()) >= 0
    assert measured.peak_bytes >= measured.attributed_peak_bytes
    params = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    buffers = {b.untyped_storage().data_ptr(): b.untyped_storage().nbytes() for b in model.buffers()}
    assert measured.at_peak["parameters"] == sum(params.values()) + sum(buffers.values())


def test_accumulation_holds_gradients_across_micro_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    one = profile_step(model, 8, (64,), accumulation_steps=1, estimate=True)
    two = profile_step(model, 8, (64,), accumulation_steps=2, estimate=True)
    grads = sum(p.numel() * 4 for p in model.parameters())
    # the second micro-step's forward runs with the first one's gradients alive
    assert two.phases["forward"]["attributed_peak_bytes"] >= one.phases["forward"]["attributed_peak_bytes"] + grads


def test_model_rejecting_a_dtype_is_a_usage_error():
    model = nn.Embedding(10, 4)
    with pytest.raises(UsageError, match="rejects"):
        profile_step(model, 2, inputs=torch.randn(1, 3))  # float ids


def test_fit_with_token_inputs():
    model = LSTMLM()
    ids = [InputSpec("ids", torch.int64, (16,), 0, 100)]
    b, prof = fit_batch_size(model, 64 * 2**20, None, inputs=ids, optimizer="adamw")
    assert b > 0 and prof is not None and prof.peak_bytes <= 64 * 2**20


def test_cli_input_specs(capsys):
    code = main(["profile", "tests.helpers:LSTMLM", "--input", "ids:int64:16:100", "--batch-size", "4",
                 "--optimizer", "adamw:lr=1e-4,weight_decay=0.1", "--estimate", "--format", "json"])
    assert code == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["batch_size"] == 4 and doc["input_shape"] == [16] and doc["optimizer"] == "adamw"


@pytest.mark.parametrize("argv, message", [
    (["profile", "tests.helpers:LSTMLM", "--input", "ids:int64"], "does not parse"),
    (["profile", "tests.helpers:LSTMLM", "--input", "ids:float32:16"], "rejects"),
    (["profile", "vgg19", "--optimizer", "lamb"], "unknown optimizer 'lamb'"),
    (["profile", "vgg19", "--optimizer", "adamw:lr"], "optimizer setting"),
    (["profile", "vgg19", "--autocast", "int8"], "dtype"),
])
def test_cli_bad_step_options(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
