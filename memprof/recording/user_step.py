"""What a user's training step is made of: inputs of any kind, loss, optimizer, precision, accumulation.

``profile_step`` and friends used to know one step: one float batch, cross-entropy or the mean,
SGD or Adam. These pieces describe any step:

- inputs: a tensor, a tuple of tensors (``model(*inputs)``) or a dict (``model(**inputs)``) of
  any dtype, as example tensors or as :class:`InputSpec` (``name:dtype:shape[:range]`` on the
  command line), the batch dimension scaled to the batch size asked for;
- the loss: ``loss_fn(output, inputs)``, by default the output's own ``.loss`` (attribute or
  key, as Hugging Face models return it), else cross-entropy against drawn targets for 2-D
  ``logits`` (or a lone output tensor), else its mean; an ambiguous output is an error
  (NOTE [ Which output the loss is taken of ]);
- the optimizer: a name (``sgd``, ``adam``, ``adamw``) with settings, or any
  ``params -> Optimizer`` callable;
- ``autocast`` (a dtype for ``torch.autocast``) and ``accumulation_steps`` (forward and
  backward that many times per optimizer step).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from ..validation import UsageError, check_choice

__all__ = [
    "INPUT_DTYPES",
    "OPTIMIZER_NAMES",
    "InputSpec",
    "Inputs",
    "StepRecipe",
    "call_model",
    "HOW_TO_CHOOSE",
    "default_loss",
    "select_output",
    "make_inputs",
    "make_optimizer",
    "parse_input_spec",
    "parse_optimizer_spec",
    "resize_batch",
]

Inputs = Union[torch.Tensor, tuple[torch.Tensor, ...], dict[str, torch.Tensor]]

#: dtype names an input spec accepts.
INPUT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}

#: optimizer names and their default settings (sgd: the deck's recipe).
OPTIMIZER_NAMES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 1e-3}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3}),
}


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, dtype, the shape of one sample, and the value range of integers.

    Attributes:
        name: the keyword the model takes (``input_ids``); inputs are passed by name when
            more than one spec is given or the name is not ``x``.
        dtype: a ``torch.dtype``.
        shape: one sample's shape (the batch dimension is added in front).
        low, high: integer inputs are drawn from ``[low, high)`` (e.g. ``high`` = vocabulary size).
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    low: int = 0
    high: int | None = None

    def make(self, batch_size: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
        """A batch of this input (random values; integers within the range)."""
        shape = (batch_size, *self.shape)
        if self.dtype == torch.bool:
            return torch.ones(shape, dtype=torch.bool).to(device)
        if self.dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(device=device, dtype=self.dtype)
        high = self.high if self.high is not None else 2
        return torch.randint(self.low, high, shape, generator=generator).to(device=device, dtype=self.dtype)


_SPEC = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*):(?P<dtype>[a-z0-9]+):(?P<shape>[0-9x,]*)(?::(?P<range>[0-9-]+))?$")


def parse_input_spec(text: str) -> InputSpec:
    """Parse ``name:dtype:shape[:range]``, e.g. ``input_ids:int64:128:50257`` or ``x:float32:3,32,32``.

    The shape is one sample's (dimensions separated by ``,`` or ``x``; empty for a scalar per
    sample); the range is ``HIGH`` (values in ``[0, HIGH)``) or ``LOW-HIGH``, integers only.

    Raises:
        UsageError: naming the part that does not parse and the allowed form.
    """
    m = _SPEC.match(text.strip())
    if m is None:
        raise UsageError(f"input spec {text!r} does not parse; expected name:dtype:shape[:range], "
                         "e.g. input_ids:int64:128:50257 or x:float32:3,32,32")
    dtype_name = m["dtype"]
    if dtype_name not in INPUT_DTYPES:
        raise UsageError(f"unknown dtype {dtype_name!r} in input spec {text!r}; allowed: {', '.join(INPUT_DTYPES)}")
    dtype = INPUT_DTYPES[dtype_name]
    dims = [d for d in re.split("[x,]", m["shape"]) if d]
    shape = tuple(int(d) for d in dims)
    if any(d <= 0 for d in shape):
        raise UsageError(f"input spec {text!r}: dimensions must be positive")
    low, high = 0, None
    if m["range"]:
        if dtype.is_floating_point or dtype == torch.bool:
            raise UsageError(f"input spec {text!r}: a value range is for integer inputs only")
        lo, _, hi = m["range"].rpartition("-")
        low, high = (int(lo) if lo else 0), int(hi)
        if high <= low:
            raise UsageError(f"input spec {text!r}: empty range {low}-{high}")
    return InputSpec(m["name"], dtype, shape, low, high)


def make_inputs(specs: Sequence[InputSpec], batch_size: int, device: torch.device, seed: int = 0) -> Inputs:
    """A batch from specs: one spec named ``x`` is a tensor, otherwise a dict by name."""
    g = torch.Generator().manual_seed(seed)
    if len(specs) == 1 and specs[0].name == "x":
        return specs[0].make(batch_size, device, g)
    return {s.name: s.make(batch_size, device, g) for s in specs}


def _map(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(fn(v) if isinstance(v, torch.Tensor) else v for v in inputs)
    raise UsageError(f"inputs must be a tensor, a tuple or a dict of tensors, got {type(inputs).__name__}")


def resize_batch(inputs: Inputs, batch_size: int) -> Inputs:
    """Example inputs with their batch dimension (dim 0) repeated or cut to ``batch_size``."""
    def resize(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t.clone()
        reps = -(-batch_size // t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch_size].clone()

    return _map(inputs, resize)


def to_device(inputs: Inputs, device: torch.device, float_dtype: torch.dtype | None = None) -> Inputs:
    """Inputs on ``device``; floating-point ones in ``float_dtype`` when given (integers untouched)."""
    def move(t: torch.Tensor) -> torch.Tensor:
        dt = float_dtype if (float_dtype is not None and t.dtype.is_floating_point) else t.dtype
        return t.to(device=device, dtype=dt)

    return _map(inputs, move)


def input_tensors(inputs: Inputs) -> list[torch.Tensor]:
    """The tensors among the inputs."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    return [v for v in values if isinstance(v, torch.Tensor)]


def batch_size_of(inputs: Inputs) -> int:
    """The batch size of inputs (dim 0 of the first tensor with a dimension)."""
    for t in input_tensors(inputs):
        if t.dim() > 0:
            return int(t.shape[0])
    raise UsageError("inputs have no batch dimension")


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)``."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


# NOTE [ Which output the loss is taken of ]
# A profile runs a training step, so it needs a loss, and a wrong guess changes what is
# measured (a loss over a (B, 8192) feature map leaves the classifier head without gradients).
# Without a ``loss_fn`` the output the loss is taken of is chosen by name, never by position, and
# always reported: the model's own ``loss`` (an attribute or key, as Hugging Face models return
# it) is used as is; else its ``logits``; else its only tensor (a tensor is itself; a tuple, list
# or mapping with one tensor gives that one). Several tensors and no such name is an error that
# says how to choose: ``loss_fn(output, inputs)`` or the general step profiler, ``memprof.track()``.
# Cross-entropy with drawn class targets is taken of (B, classes) scores, the mean otherwise.
HOW_TO_CHOOSE = ("pass loss_fn= to memprof.profile_step (loss_fn(output, inputs) returning the loss), "
                 "or profile your own training step with memprof.track()")


def output_loss(output: Any) -> torch.Tensor | None:
    """The loss a model returned itself: a ``.loss`` attribute or a ``"loss"`` key, else None."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    return loss if isinstance(loss, torch.Tensor) else None


def select_output(output: Any) -> tuple[str, torch.Tensor]:
    """``(name, tensor)`` of the output a loss is taken of (NOTE [ Which output the loss is taken of ]).

    Raises:
        UsageError: when the output holds several tensors and none is named ``loss`` or ``logits``.
    """
    if isinstance(output, torch.Tensor):
        return "output", output
    own = output_loss(output)
    if own is not None:
        return "loss", own
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return "logits", logits
    if isinstance(output, Mapping):
        tensors = {str(k): v for k, v in output.items() if isinstance(v, torch.Tensor)}
        if "logits" in tensors:
            return "logits", tensors["logits"]
        if len(tensors) == 1:
            return next(iter(tensors.items()))
        raise UsageError(f"the model returns {len(tensors)} tensors ({', '.join(tensors) or 'none'}) and none is "
                         f"named loss or logits, so the loss cannot be chosen: {HOW_TO_CHOOSE}")
    if isinstance(output, (tuple, list)):
        idx = [i for i, v in enumerate(output) if isinstance(v, torch.Tensor)]
        if len(idx) == 1:
            return f"output[{idx[0]}]", output[idx[0]]
        raise UsageError(f"the model returns a {type(output).__name__} of {len(idx)} tensors, so the loss cannot "
                         f"be chosen: {HOW_TO_CHOOSE}")
    raise UsageError(f"the model returns a {type(output).__name__}, not a tensor: {HOW_TO_CHOOSE}")


def default_loss(output: Any, targets: torch.Tensor | None,
                 choice: dict[str, str] | None = None) -> torch.Tensor:
    """The loss NOTE [ Which output the loss is taken of ] chooses; ``choice`` (if given) is filled
    with ``{"output": name, "function": "as returned" | "cross_entropy" | "mean"}``."""
    key, out = select_output(output)
    if key == "loss":
        function, loss = "as returned", (out if out.dim() == 0 else out.float().mean())
    elif targets is not None and out.dim() == 2:
        function = "cross_entropy"
        loss = nn.functional.cross_entropy(out.float() if out.dtype != torch.float32 else out, targets)
    else:
        function, loss = "mean", out.float().mean()
    if choice is not None:
        choice.clear()
        choice.update(output=key, function=function)
    return loss


def make_optimizer(spec: str | Callable[[Any], torch.optim.Optimizer], params: Any, **settings: Any) -> torch.optim.Optimizer:
    """An optimizer from a name (``sgd``, ``adam``, ``adamw``) with settings, or a callable.

    Args:
        spec: a name from :data:`OPTIMIZER_NAMES` or ``params -> Optimizer``.
        params: what the optimizer updates.
        settings: keyword arguments over the name's defaults (``lr``, ``weight_decay``, ...).

    Raises:
        UsageError: for an unknown name or setting, or a callable that returns no optimizer.
    """
    if callable(spec) and not isinstance(spec, str):
        opt = spec(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise UsageError(f"the optimizer callable returned a {type(opt).__name__}, not a torch.optim.Optimizer")
        return opt
    check_choice("optimizer", spec, OPTIMIZER_NAMES)
    cls, defaults = OPTIMIZER_NAMES[spec]
    try:
        return cls(params, **{**defaults, **settings})
    except TypeError as exc:
        raise UsageError(f"bad setting for optimizer {spec!r}: {exc}") from None


def parse_optimizer_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value,...]`` (e.g. ``adamw:lr=1e-4,weight_decay=0.1``) -> (name, settings).

    Values are read as Python literals (numbers, booleans, tuples such as ``(0.9,0.95)``).

    Raises:
        UsageError: for an unknown name or a setting that is not ``key=value``.
    """
    import ast

    name, _, rest = text.partition(":")
    check_choice("optimizer", name, OPTIMIZER_NAMES)
    settings: dict[str, Any] = {}
    for item in re.split(r",(?![^()]*\))", rest) if rest else []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UsageError(f"bad optimizer setting {item!r} in {text!r}; expected key=value, e.g. adamw:lr=1e-4")
        try:
            settings[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise UsageError(f"bad optimizer setting {item!r} in {text!r}: {value!r} is not a number or literal") from None
    return name, settings


@dataclass(frozen=True)
class StepRecipe:
    """How one training step runs: loss, precision, accumulation.

    Attributes:
        loss_fn: ``loss_fn(output, inputs) -> loss``; None: :func:`default_loss`.
        autocast: a dtype for ``torch.autocast`` over forward and loss, or None.
        accumulation_steps: forward and backward this many times per optimizer step (the
            loss divided by it, as a training loop does).
    """

    loss_fn: Callable[[Any, Inputs], torch.Tensor] | None = None
    autocast: torch.dtype | None = None
    accumulation_steps: int = 1
    #: what the last loss was taken of (NOTE [ Which output the loss is taken of ]), filled by :meth:`loss`
    choice: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def autocast_context(self, device: torch.device) -> Any:
        """``torch.autocast`` for the device, or a null context."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)

    def loss(self, output: Any, inputs: Inputs, targets: torch.Tensor | None) -> torch.Tensor:
        """The step's loss (before the division for accumulation)."""
        if self.loss_fn is not None:
            self.choice.clear()
            self.choice.update(output="the whole output", function="loss_fn")
            return self.loss_fn(output, inputs)
        return default_loss(output, targets, self.choice)
