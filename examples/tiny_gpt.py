"""A tiny GPT-style language model trained for a few steps on random tokens.

Plain PyTorch, no memprof inside: profile it with

    memprof run examples/tiny_gpt.py --steps 3
    memprof run --format json examples/tiny_gpt.py --batch-size 16
    memprof sweep --models examples.tiny_gpt:build --input ids:int64:64:1000 --batch-sizes 8,64

or wrap the loop in ``with memprof.track() as rec:`` (see README, "Profile your own training").
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and an MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token and position embeddings, a few blocks, a language-model head."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))  # (B, T, width)
        mask = torch.triu(torch.full((t, t), float("-inf"), device=ids.device), diagonal=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))  # (B, T, vocab)


def build(vocab: int = 1000, context: int = 64) -> TinyGPT:
    """The model main() trains: a factory for ``memprof profile/fit/sweep examples.tiny_gpt:build``."""
    return TinyGPT(vocab, width=128, layers=2, heads=4, context=context)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="training steps (default: 5)")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per step (default: 8)")
    ap.add_argument("--context", type=int, default=64, help="tokens per sequence (default: 64)")
    ap.add_argument("--vocab", type=int, default=1000, help="vocabulary size (default: 1000)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build(args.vocab, args.context)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    for step in range(args.steps):
        ids = torch.randint(args.vocab, (args.batch_size, args.context + 1))
        logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        print(f"step {step + 1}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
