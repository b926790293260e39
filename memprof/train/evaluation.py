"""Evaluation: predictions of a model on a loader, and rank 0's BatchNorm statistics for every rank."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import AmpMode
from .measurements import autocast_context

__all__ = ["broadcast_buffers", "evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: str | AmpMode = "off",
    limit_batches: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Predict every batch of ``loader`` in eval mode (this rank's share only).

    Args:
        model: the (unwrapped) model; its train/eval mode is restored afterwards.
        loader: the evaluation loader.
        device: where to compute.
        amp: autocast mode.
        limit_batches: stop after this many batches.

    Returns:
        ``(targets, predictions, loss_sum)`` with the labels on the CPU and the summed loss.
    """
    was_training = model.training
    model.eval()
    targets, preds = [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for i, (xb, yb) in enumerate(loader):
            if limit_batches is not None and i >= limit_batches:
                break
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with autocast_context(amp, device):
                out = model(xb)
            loss_sum += nn.functional.cross_entropy(out.float(), yb, reduction="sum").double()
            targets.append(yb.cpu())
            preds.append(out.argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    cat = (lambda ts: torch.cat(ts) if ts else torch.zeros(0, dtype=torch.long))
    return cat(targets), cat(preds), float(loss_sum)


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluating.

    Under DDP each rank folds its own last batch into its running statistics after the buffers
    were broadcast at the start of that forward; evaluation and checkpoints use rank 0's.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in model.buffers():
            dist.broadcast(b, src=0)
