"""Prototype: which output a profile takes its loss of, said out loud; ambiguity is an error.

Rules (NOTE [ Which output the loss is taken of ]):
- a tensor: itself;
- a mapping (dict, HF ModelOutput): its ``loss`` if present (used as is), else ``logits``, else
  its only tensor; several tensors and neither name: error;
- a tuple/list: its only tensor; several: error (no names to choose by);
then cross-entropy with random class targets for (B, classes) scores, the mean otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class UsageError(ValueError):
    pass


@dataclass(frozen=True)
class LossChoice:
    output: str     # "output", "loss", "logits", "output[1]", "features"...
    function: str   # "cross_entropy", "mean", "as returned", "loss_fn"


HOW_TO_CHOOSE = ("pass loss_fn=... to memprof.profile_step (a function of the output returning the loss), "
                 "or profile your own step with memprof.track()")


def select_output(output: Any) -> tuple[str, torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return "output", output
    if isinstance(output, Mapping):
        tensors = {str(k): v for k, v in output.items() if isinstance(v, torch.Tensor)}
        for key in ("loss", "logits"):
            if key in tensors:
                return key, tensors[key]
        if len(tensors) == 1:
            return next(iter(tensors.items()))
        raise UsageError(f"the model returns {len(tensors)} tensors ({', '.join(tensors)}), none named loss or "
                         f"logits: which one is the loss taken of? {HOW_TO_CHOOSE}")
    if isinstance(output, (tuple, list)):
        idx = [i for i, v in enumerate(output) if isinstance(v, torch.Tensor)]
        if len(idx) == 1:
            return f"output[{idx[0]}]", output[idx[0]]
        raise UsageError(f"the model returns a {type(output).__name__} of {len(idx)} tensors: which one is the loss "
                         f"taken of? {HOW_TO_CHOOSE}")
    raise UsageError(f"the model returns a {type(output).__name__}, not a tensor: {HOW_TO_CHOOSE}")


def compute_loss(output: Any, targets: torch.Tensor | None) -> tuple[torch.Tensor, LossChoice]:
    key, t = select_output(output)
    if key == "loss":
        return t if t.dim() == 0 else t.float().mean(), LossChoice(key, "as returned")
    if targets is not None and t.dim() == 2:
        return nn.functional.cross_entropy(t, targets), LossChoice(key, "cross_entropy")
    return t.float().mean(), LossChoice(key, "mean")


if __name__ == "__main__":
    x = torch.randn(4, 10)
    print(compute_loss({"features": torch.randn(4, 8192), "logits": x}, torch.zeros(4, dtype=torch.long))[1])
    try:
        compute_loss({"a": x, "b": x}, None)
    except UsageError as e:
        print(e)
