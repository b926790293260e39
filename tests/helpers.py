"""Small shared test utilities (importable as ``tests.helpers``)."""

from __future__ import annotations

import torch
from torch import nn


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (0 when both are all zero)."""
    scale = b.detach().abs().max().item()
    diff = (a.detach() - b.detach()).abs().max().item()
    return diff / scale if scale > 0 else diff


def saved_bytes(fn, params=()) -> int:
    """Bytes autograd saves while running ``fn()``: storages deduplicated, parameters excluded."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in param_ptrs:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


class Square(torch.autograd.Function):
    """x * x with a hand-written backward: a user's custom autograd.Function in the track tests."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class LSTMLM(nn.Module):
    """A 2-layer LSTM language model on token ids (vocabulary 100): the track tests' user model."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 100)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.emb(ids))[0])
