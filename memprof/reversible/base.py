"""The invertible-module protocol and the generic reverse step every block can fall back on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._state import RngTape

__all__ = ["InvertibleModule", "ParamGrads", "reverse_by_recompute", "is_invertible"]

#: Gradients of a block's parameters, as (parameter, gradient or None) pairs.
ParamGrads = Sequence[tuple[nn.Parameter, "torch.Tensor | None"]]


def is_invertible(module: nn.Module) -> bool:
    """True when ``module`` has a callable ``inverse`` (the duck-typed protocol)."""
    return callable(getattr(module, "inverse", None))


def grad_params(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require grad, each once."""
    return [p for p in module.parameters() if p.requires_grad]


def reverse_by_recompute(
    block: nn.Module, y: torch.Tensor, grad_y: torch.Tensor, tape: RngTape
) -> tuple[torch.Tensor, torch.Tensor | None, ParamGrads]:
    """Rebuild a block's input from its output, then back-propagate through one recomputed forward.

    Works for any module with ``inverse``: x = inverse(y) without grad, then y' = block(x) with
    grad, and one vector-Jacobian product with ``grad_y``.

    Returns:
        ``(x, grad_x, param_grads)``.
    """
    with torch.no_grad():
        x = block.inverse(y)
    params = grad_params(block)
    x_leaf = x.detach().requires_grad_(True)
    with torch.enable_grad(), tape.replay("block"):
        y_again = block(x_leaf)
    grads = torch.autograd.grad(y_again, [x_leaf, *params], grad_y, allow_unused=True)
    return x, grads[0], list(zip(params, grads[1:]))


class InvertibleModule(nn.Module):
    """A module with an exact ``inverse``, usable inside a :class:`ReversibleSequence`.

    Subclasses implement ``forward`` and ``inverse``. They may override :meth:`reverse` with a
    cheaper backward step than the generic recompute (for example, a permutation's gradient is
    the inverse permutation of the output gradient, with nothing to recompute).
    """

    #: True when the module records the RNG state of its own sub-regions (see AdditiveCoupling).
    records_rng: bool = False

    def inverse(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Return x such that ``forward(x) == y``."""
        raise NotImplementedError(f"{type(self).__name__} must implement inverse()")

    def reverse(
        self, y: torch.Tensor, grad_y: torch.Tensor, tape: RngTape, *, y_owned: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, ParamGrads]:
        """One step of reversible backward: ``(x, grad_x, param_grads)`` from ``(y, grad_y)``.

        ``y_owned`` says that nothing else holds ``y``, so an override may rebuild x in y's memory.
        """
        return reverse_by_recompute(self, y, grad_y, tape)
