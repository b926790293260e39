"""Where each module's forward and backward start and end: :class:`ModuleBoundaries`.

A small component beside the storage tracker (as PyTorch's MemTracker hands module boundaries
to ``ModTracker``): it installs a forward pre-hook and a forward hook on every module, and in
them plain tensor hooks that fire when the module's backward starts and ends, and calls the
four user hooks given to :meth:`ModuleBoundaries.register_user_hooks`. It keeps no memory
figures itself.

Example::

    bounds = ModuleBoundaries(model, in_backward=lambda: phase == "backward")
    bounds.register_user_hooks(pre_fw, post_fw, pre_bw, post_bw)
    with bounds.track():
        loss = model(x).sum()
        loss.backward()

Known limitations: a module whose inputs need no gradient (the first layer) has no
end-of-backward event, and a module whose output needs none has no start-of-backward event
(its owner closes such intervals at the end of the backward phase); only the first input and
output tensor that need a gradient are watched (NOTE [ Module backward boundaries ]); the
gradient hooks live on the step's tensors, so one on an input tensor the caller keeps stays with
that tensor after :meth:`ModuleBoundaries.track` exits (the user hooks should check that they
are still wanted, as the storage tracker's do).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..vocabulary import Phase
from .tensors import tensors_in

__all__ = ["ModuleBoundaries"]

# NOTE [ Module backward boundaries ]
# A module's backward starts when the gradient of its (first) output is computed and ends when
# the gradient of its (first) input is: one plain tensor hook on each, which observes the
# gradient and returns None, so nothing is kept and nothing changes. Not used: full backward
# hooks (register_full_backward_hook), which wrap inputs and outputs in extra autograd nodes,
# change the graph and break in-place ops such as ReLU(inplace=True); multi-grad hooks in "all"
# mode, which buffer gradients (keeping them alive longer: it changed irevvgg's peak) and query
# the engine about leaves, which autograd.grad() inside a reversible backward does not allow;
# "any" mode, correct but several times slower per module call.
def _on_gradient(tensors: list[torch.Tensor], fn: Callable[[], None]) -> Any:
    """Call ``fn()`` when the gradient of the first of ``tensors`` is computed."""

    def hook(grad: torch.Tensor) -> None:
        fn()

    return tensors[0].register_hook(hook)


def _needing_grad(obj: Any) -> list[torch.Tensor]:
    # never parameters: a hook there would outlive the step
    return [t for t in tensors_in(obj) if t.requires_grad and not isinstance(t, nn.Parameter)]


def _nothing(*_: Any) -> None:
    return None


class ModuleBoundaries:
    """Call user hooks at each module's forward and backward boundaries.

    Args:
        model: the modules watched are ``model.named_modules()`` (names as there).
        in_backward: tells whether a forward call happens inside backward (the recomputation of
            a reversible block); such a call is reported with phase ``backward``.

    Attributes:
        module_names: qualified name -> class name, for every watched module (after :meth:`track`).
    """

    def __init__(self, model: nn.Module, in_backward: Callable[[], bool]) -> None:
        self.model = model
        self._in_backward = in_backward
        self.module_names: dict[str, str] = {}
        self._open: dict[int, list[tuple[str, str, Any]]] = {}
        self._pre_fw: Callable[[str, str], Any] = _nothing
        self._post_fw: Callable[[str, str, Any], None] = _nothing
        self._pre_bw: Callable[[str], None] = _nothing
        self._post_bw: Callable[[str], None] = _nothing

    def register_user_hooks(
        self,
        pre_fw: Callable[[str, str], Any] | None = None,
        post_fw: Callable[[str, str, Any], None] | None = None,
        pre_bw: Callable[[str], None] | None = None,
        post_bw: Callable[[str], None] | None = None,
    ) -> None:
        """Set the hooks (any may be None).

        Args:
            pre_fw: ``(name, phase)`` when a module's forward starts; what it returns is handed
                back to ``post_fw`` for the same call.
            post_fw: ``(name, phase, token)`` when that forward returns.
            pre_bw: ``(name)`` when the gradient of the module's output is computed.
            post_bw: ``(name)`` when the gradient of the module's input is computed.
        """
        self._pre_fw = pre_fw or _nothing
        self._post_fw = post_fw or _nothing
        self._pre_bw = pre_bw or _nothing
        self._post_bw = post_bw or _nothing

    def _pre_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            phase = Phase.BACKWARD.value if self._in_backward() else Phase.FORWARD.value
            token = self._pre_fw(name, phase)
            self._open.setdefault(id(module), []).append((name, phase, token))
            if torch.is_grad_enabled():
                needing = _needing_grad(args)
                if needing:
                    _on_gradient(needing, lambda: self._post_bw(name))
        return hook

    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = self._open.get(id(module))
        if not stack:
            return
        name, phase, token = stack.pop()
        self._post_fw(name, phase, token)
        if torch.is_grad_enabled():
            needing = _needing_grad(output)
            if needing:
                _on_gradient(needing, lambda: self._pre_bw(name))

    @contextlib.contextmanager
    def track(self) -> Iterator[ModuleBoundaries]:
        """Install the module hooks for the body; remove them on exit (also on error)."""
        handles = []
        try:
            for name, module in self.model.named_modules():
                self.module_names[name] = type(module).__name__
                handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
                handles.append(module.register_forward_hook(self._post_hook))
            yield self
        finally:
            for h in handles:
                h.remove()
