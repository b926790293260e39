"""Module-call records: forward hooks give the rows, ``saved_tensors_hooks`` give what autograd keeps.

One forward pass (no backward) at the real batch size fills one :class:`LayerRecord` per row:
shapes, parameters, the deck-convention activation count, and the bytes autograd really saves
for the row. Everything is registered in :func:`record_layers` and removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..reversible import ReversibleSequence
from ..validation import UsageError
from .tensors import storage_key

__all__ = [
    "COUNTED_KINDS",
    "ForwardError",
    "LayerRecord",
    "Recording",
    "make_input",
    "record_layers",
]

#: Layer kinds whose output a standard network keeps for backward: the deck's "#activations"
#: counts their output elements per sample (NOTE [ The deck's activation convention ]).
COUNTED_KINDS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.Linear,
)

# NOTE [ The deck's activation convention ]
# The deck's "#activations" column is the number of output elements per sample of every layer
# whose output a standard network keeps for backward: convolutions, batch norms, poolings and
# linear layers (COUNTED_KINDS). An in-place ReLU writes into its input's storage and adds
# none; any other layer (dropout, functional ops, a user's own leaf) counts 0 by convention.
# A reversible block counts 0 as a whole, as the deck's RevBlocks do, even though a transition
# conv inside it keeps its input: the saved_bytes column, measured, shows what is really kept.
# A reversible block is a module other than the model itself that is a ReversibleSequence with
# reversible=True or has one as a direct child (a RevBlock: transition + couplings); every layer
# inside it counts 0. The rule is structural, so the total does not depend on --depth. A layer
# that runs with grad disabled keeps nothing and counts 0 as well. The convention is a model of memory; the
# saved_bytes column is the measurement.

# NOTE [ Attributing saved tensors ]
# A saved_tensors_hooks pack hook sees every tensor autograd saves during the forward, including
# the single output a reversible sequence saves through ctx.save_for_backward. The tensor is
# attributed to the row of the innermost active module at or above the chosen depth; a tensor
# saved by a container's own functional ops (torch.flatten, F.relu in its forward) outside any
# row goes to a "(own ops)" row for that container. What autograd holds is a storage, not a
# tensor: a view keeps its whole base alive, and the same storage is often saved several times
# (a BatchNorm output saved by the in-place ReLU that overwrote it and again by the next conv).
# So storages are deduplicated across the whole pass by identity (the StorageImpl pointer,
# which also works on the meta device where every data pointer is 0) and counted once, at the
# first row that saved them, with their full size. Parameters and buffers are model state, not
# activations: their storages are excluded by identity. The batch of inputs itself is counted
# (the first layer saves it; a training step does hold it).

# NOTE [ Running the pass without touching the model ]
# The pass runs through torch.func.functional_call with substitute tensors for every parameter
# and buffer: on the meta device empty meta tensors of the chosen dtype (no memory, no
# arithmetic, exact shapes, dtypes and storages), on a real device the parameters themselves
# (converted if the dtype or device differ) and clones of the buffers. BatchNorm running
# statistics are therefore updated in the substitutes only, the RNG state is forked, training
# mode is set for the pass and restored after it: profiling changes neither the model nor its
# outputs. The meta device follows the CPU's dispatch (for instance dropout saves a float noise
# tensor there, a bool mask on CUDA); to measure a CUDA run, pass device="cuda".


class ForwardError(UsageError):
    """The model's forward failed during recording; the message names the layers that ran."""


@dataclass
class LayerRecord:
    """One row of the per-layer table: one call of a module (or a container's own ops).

    Byte counts are at the recorded batch size and dtype; ``activation_elements`` is the
    deck-convention count over the whole batch (divide by the batch size for per sample).
    """

    index: int
    name: str
    layer: str
    depth: int
    kind: str = "module"  # "module", "own-ops" or "unused"
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    in_channels: int | None = None
    out_channels: int | None = None
    kernel: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    params: int = 0
    param_bytes: int = 0
    grad_bytes: int = 0
    activation_elements: int = 0
    saved_bytes: int = 0
    saved_storages: int = 0
    reversible: bool = False
    inplace: bool = False
    finished: bool = False


@dataclass
class Recording:
    """What one recorded forward produced: the rows in call order and the pass settings."""

    records: list[LayerRecord]
    batch_size: int
    dtype: torch.dtype
    device: str
    depth: int | None
    model_name: str
    total_params: int
    total_param_bytes: int
    total_grad_bytes: int


def _shapes(obj: Any) -> list[tuple[int, ...]]:
    """Shapes of the tensors in a (nested) tensor / tuple / list / dict, in order."""
    if isinstance(obj, torch.Tensor):
        return [tuple(obj.shape)]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _shapes(v)]
    if isinstance(obj, (tuple, list)):
        return [s for v in obj for s in _shapes(v)]
    return []


def _numel(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, dict):
        return sum(_numel(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_numel(v) for v in obj)
    return 0


def _pair(v: Any) -> tuple[int, ...] | None:
    if v is None:
        return None
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),)


def _describe_module(module: nn.Module) -> dict[str, Any]:
    """Channels, kernel and stride read from the module's own attributes (None when absent)."""
    out: dict[str, Any] = {}
    if isinstance(module, nn.modules.conv._ConvNd):
        out = dict(in_channels=module.in_channels, out_channels=module.out_channels,
                   kernel=_pair(module.kernel_size), stride=_pair(module.stride))
    elif isinstance(module, nn.Linear):
        out = dict(in_channels=module.in_features, out_channels=module.out_features)
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        out = dict(in_channels=module.num_features, out_channels=module.num_features)
    elif isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        out = dict(kernel=_pair(module.kernel_size), stride=_pair(module.stride or module.kernel_size))
    return out


def _is_reversible_seq(module: nn.Module) -> bool:
    return isinstance(module, ReversibleSequence) and module.reversible


def _contains_reversible(module: nn.Module) -> bool:
    return any(_is_reversible_seq(m) for m in module.modules())


@dataclass
class _Frame:
    module: nn.Module
    name: str
    depth: int
    row: LayerRecord | None  # the row this call opened (None inside a row or for a container)
    counted: bool
    in_block: bool  # inside (or is) a reversible block: NOTE [ The deck's activation convention ]
    own_row: LayerRecord | None = None


class _Recorder:
    """Hook callbacks and the state they fill; see NOTE [ Attributing saved tensors ]."""

    def __init__(self, model: nn.Module, depth: int | None, excluded: set[int]) -> None:
        self.depth = depth
        self.excluded = excluded
        self.names: dict[int, str] = {}
        self.blocks: set[int] = set()
        for name, m in model.named_modules():
            self.names.setdefault(id(m), name)
            if name and (_is_reversible_seq(m) or any(_is_reversible_seq(c) for c in m.children())):
                self.blocks.add(id(m))
        self.calls: dict[int, int] = {}
        self.stack: list[_Frame] = []
        self.records: list[LayerRecord] = []
        self.attributed: set[int] = set()
        self.seen: set[int] = set()

    # -- rows ----------------------------------------------------------------------------------
    def _display(self, name: str) -> str:
        return name if name else "(model)"

    def _new_record(self, name: str, layer: str, depth: int, kind: str) -> LayerRecord:
        rec = LayerRecord(index=len(self.records), name=name, layer=layer, depth=depth, kind=kind)
        self.records.append(rec)
        return rec

    def _attribute_params(self, rec: LayerRecord, params: Iterator[nn.Parameter]) -> None:
        for p in params:
            if id(p) in self.attributed:
                continue
            self.attributed.add(id(p))
            nbytes = p.numel() * p.element_size()
            rec.params += p.numel()
            rec.param_bytes += nbytes
            if p.requires_grad:
                rec.grad_bytes += nbytes

    def _is_row(self, module: nn.Module, depth: int) -> bool:
        leaf = next(iter(module.children()), None) is None
        return leaf if self.depth is None else (leaf or depth >= self.depth)

    def current_row(self) -> LayerRecord:
        """The row that owns what happens now (creating a container's own-ops row if needed)."""
        for frame in reversed(self.stack):
            if frame.row is not None:
                return frame.row
        if not self.stack:
            return self._outside_row()
        frame = self.stack[-1]
        if frame.own_row is None:
            frame.own_row = self._new_record(
                f"{self._display(frame.name)} (own ops)", f"{type(frame.module).__name__} ops",
                frame.depth + 1, "own-ops",
            )
            frame.own_row.finished = True
            self._attribute_params(frame.own_row, frame.module.parameters(recurse=False))
        return frame.own_row

    def _outside_row(self) -> LayerRecord:
        for rec in self.records:
            if rec.kind == "outside":
                return rec
        rec = self._new_record("(outside modules)", "", 0, "outside")
        rec.finished = True
        return rec

    # -- hooks ---------------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = self.names.get(id(module), type(module).__name__)
        depth = 0 if name == "" else name.count(".") + 1
        n = self.calls[id(module)] = self.calls.get(id(module), 0) + 1
        inside_row = any(f.row is not None for f in self.stack)
        row = None
        if not inside_row and self._is_row(module, depth):
            label = self._display(name) + (f"#{n}" if n > 1 else "")
            row = self._new_record(label, type(module).__name__, depth, "module")
            row.input_shapes = _shapes(args) + _shapes(kwargs)
            for key, value in _describe_module(module).items():
                setattr(row, key, value)
            row.reversible = _contains_reversible(module)
            row.inplace = bool(getattr(module, "inplace", False)) and next(iter(module.children()), None) is None
            self._attribute_params(row, module.parameters())
        counted = isinstance(module, COUNTED_KINDS)
        in_block = id(module) in self.blocks or bool(self.stack and self.stack[-1].in_block)
        self.stack.append(_Frame(module, name, depth, row, counted, in_block))

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        # Frames are pushed and popped in call order; search in case a module returned early.
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i].module is module:
                frame = self.stack.pop(i)
                del self.stack[i:]
                break
        else:  # pragma: no cover - a post hook without its pre hook
            return
        if frame.row is not None:
            frame.row.output_shapes = _shapes(output)
            frame.row.finished = True
            if frame.row.in_channels is None and next(iter(module.children()), None) is not None:
                self._channels_from_shapes(frame.row)
        if (frame.counted and not frame.in_block and torch.is_grad_enabled()
                and not any(f.counted for f in self.stack)):
            row = frame.row if frame.row is not None else self.current_row()
            row.activation_elements += _numel(output)

    @staticmethod
    def _channels_from_shapes(row: LayerRecord) -> None:
        if len(row.input_shapes) == 1 and len(row.input_shapes[0]) >= 2:
            row.in_channels = row.input_shapes[0][1]
        if len(row.output_shapes) == 1 and len(row.output_shapes[0]) >= 2:
            row.out_channels = row.output_shapes[0][1]

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key is None or key in self.excluded or key in self.seen:
            return t
        self.seen.add(key)
        row = self.current_row()
        row.saved_bytes += t.untyped_storage().nbytes()
        row.saved_storages += 1
        return t


def _substitutes(
    model: nn.Module, device: torch.device, dtype: torch.dtype, empty: bool = False
) -> dict[str, torch.Tensor]:
    """Per parameter/buffer name, the tensor the pass uses (NOTE [ Running the pass ... ]).

    ``empty``: new empty tensors on ``device`` (meta, or fake CPU inside a FakeTensorMode).
    """
    subs: dict[str, torch.Tensor] = {}
    empty = empty or device.type == "meta"
    for name, p in model.named_parameters():
        target = dtype if p.is_floating_point() else p.dtype
        if empty:
            subs[name] = torch.empty(p.shape, dtype=target, device=device).requires_grad_(p.requires_grad)
        elif p.device == device and p.dtype == target:
            subs[name] = p
        else:
            subs[name] = p.detach().to(device=device, dtype=target).requires_grad_(p.requires_grad)
    for name, b in model.named_buffers():
        target = dtype if b.is_floating_point() else b.dtype
        if empty:
            subs[name] = torch.empty(b.shape, dtype=target, device=device)
        else:
            subs[name] = b.detach().to(device=device, dtype=target, copy=True)
    return subs


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class _FakeCpu:
    """A FakeTensorMode whose tensors report device cpu, and the CPU's kernel corrections."""

    def __init__(self) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.mode = FakeTensorMode()

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        from .estimate import DeviceKernels

        # FakeTensorMode logs a traceback before re-raising a shape error; the caller reports
        # the error in one line
        logger = logging.getLogger("torch._subclasses.fake_tensor")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            with self.mode, DeviceKernels("cpu"):
                yield
        finally:
            logger.setLevel(level)


def _fake_cpu_context() -> _FakeCpu:
    return _FakeCpu()


def make_input(shape: Sequence[int], batch_size: int, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    """A batch of standard-normal inputs (seeded locally; empty on the meta device)."""
    device = torch.device(device)
    size = (batch_size, *shape)
    if device.type == "meta":
        return torch.empty(size, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    return torch.randn(size, generator=gen, dtype=dtype, device=device)


def _batch(inputs: Any, batch_size: int, dtype: torch.dtype, device: torch.device, mode: Any = None) -> Any:
    """The batch a training step would take (``StepSpec`` inputs); fake when ``mode`` is a FakeTensorMode."""
    from .runner import StepSpec, fake_inputs, make_batch
    from .user_step import resize_batch

    if mode is None:
        return make_batch(StepSpec(batch_size, inputs=inputs), device, dtype, 0)
    real = make_batch(StepSpec(1, inputs=inputs), device, dtype, 0)  # one real sample, then fake and repeated
    with mode:
        return resize_batch(fake_inputs(real, mode, device), batch_size)


def _call_args(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of ``model(x)``, ``model(*x)`` or ``model(**x)``."""
    if isinstance(x, torch.Tensor):
        return (x,), {}
    if isinstance(x, dict):
        return (), dict(x)
    return tuple(x), {}


def _shape_text(input_shape: Sequence[int]) -> str:
    return "input shape (" + ",".join(str(v) for v in input_shape) + ")"


def _describe_inputs(x: Any) -> str:
    """``inputs input_ids (2, 16) int64, ...`` for an error message."""
    from ..vocabulary import dtype_name

    items = (x.items() if isinstance(x, dict) else enumerate([x] if isinstance(x, torch.Tensor) else x))
    return "inputs " + ", ".join(f"{k} {tuple(v.shape)} {dtype_name(v.dtype)}" for k, v in items
                                 if isinstance(v, torch.Tensor))


def record_layers(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    depth: int | None = None,
    device: str = "meta",
    model_name: str | None = None,
    inputs: Any = None,
) -> Recording:
    """Run one training-mode forward (no backward) and record one row per layer call.

    Arguments are assumed checked (see :func:`memprof.api.table.check_table_args`).

    Args:
        model: the module; it is left exactly as it was (weights, buffers, mode, hooks, RNG).
        input_shape: one sample's shape, without the batch dimension.
        batch_size: the batch the pass runs with.
        dtype: the floating dtype parameters, buffers and input are converted to for the pass.
        depth: the row granularity: modules whose qualified name has ``depth`` parts, and
            leaves above that; None for every leaf. 0 makes the whole model one row.
        device: "meta" (default: exact shapes and storages, no arithmetic) or a real device.
        model_name: the name shown in the result (default: the class name).
        inputs: instead of one float input of ``input_shape``: example inputs (a tensor, a
            tuple for ``model(*inputs)`` or a dict for ``model(**inputs)``, their batch dimension
            repeated or cut to ``batch_size``) or a list of
            :class:`~memprof.recording.user_step.InputSpec`, as a training step takes them.

    Returns:
        The :class:`Recording`.

    Raises:
        ForwardError: (a UsageError) when the forward fails, naming the layer it failed in,
            the layers that ran, and the input shape.
    """
    dev = torch.device(device)
    # NOTE [ The meta pass runs on fake CPU tensors ]
    # Tensors on the meta device take the meta device's branches inside composite ops: nn.LSTM
    # decomposes into matmuls instead of oneDNN's fused layer, scaled-dot-product attention picks
    # the math backend instead of the CPU's flash kernel, so what autograd saves differs from a
    # CPU run (an LSTM: 124 vs 266 MiB). A pass for "meta" therefore runs on FakeTensors that
    # report device cpu (no memory, no arithmetic, the CPU's dispatch) under DeviceKernels, which
    # gives the fake oneDNN LSTM its real workspace (memprof.recording.workspace).
    fake = _fake_cpu_context() if dev.type == "meta" else None
    if fake is None:
        subs = _substitutes(model, dev, dtype)
        x = make_input(input_shape, batch_size, dtype, dev) if inputs is None else _batch(inputs, batch_size, dtype, dev)
    else:
        with fake.mode:
            subs = _substitutes(model, torch.device("cpu"), dtype, empty=True)
        if inputs is None:
            with fake.mode:
                x = torch.empty((batch_size, *input_shape), dtype=dtype)
        else:
            x = _batch(inputs, batch_size, dtype, torch.device("cpu"), fake.mode)
    args, kwargs = _call_args(x)
    given = _shape_text(input_shape) if inputs is None else _describe_inputs(x)
    excluded = {k for k in (storage_key(t) for t in subs.values()) if k is not None}
    recorder = _Recorder(model, depth, excluded)
    handles = []
    was_training = {m: m.training for m in model.modules()}
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(recorder.post_hook, with_kwargs=True))
        model.train()
        with _forked_rng(dev), torch.enable_grad(), \
                fake.run() if fake is not None else contextlib.nullcontext(), \
                torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t):
            try:
                out = torch.func.functional_call(model, subs, args, kwargs, strict=False)
            except Exception as exc:
                raise _forward_error(
                    model_name or type(model).__name__, recorder, given, exc, dev.type
                ) from exc
        del out  # the graph (and every saved storage) lived until here, so keys were unique
    finally:
        for h in handles:
            h.remove()
        for m, mode in was_training.items():
            m.training = mode
    records = recorder.records
    leftover = LayerRecord(index=len(records), name="(parameters of modules not called)",
                           layer="", depth=0, kind="unused", finished=True)
    param_names = {name for name, _ in model.named_parameters()}
    recorder._attribute_params(leftover, (t for name, t in subs.items() if name in param_names))
    if leftover.params:
        records.append(leftover)
    params = list({id(p): p for p in model.parameters()}.values())
    total_params = sum(p.numel() for p in params)
    return Recording(
        records=records,
        batch_size=batch_size,
        dtype=dtype,
        device=dev.type,
        depth=depth,
        model_name=model_name or type(model).__name__,
        total_params=total_params,
        total_param_bytes=sum(r.param_bytes for r in records),
        total_grad_bytes=sum(r.grad_bytes for r in records),
    )


def _forward_error(model: str, recorder: _Recorder, given: str, exc: Exception, device: str) -> ForwardError:
    ran = [r.name for r in recorder.records if r.finished and r.kind == "module"]
    failing = [f for f in recorder.stack if f.name != ""]
    where = (
        f"in {recorder._display(failing[-1].name)} ({type(failing[-1].module).__name__})"
        if failing else f"in {model}.forward"
    )
    if ran:
        shown = ", ".join(ran[-3:])
        ran_text = f"after {len(ran)} layer(s) ran (last: {shown})"
    else:
        ran_text = "before any layer finished"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    hint = ""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    no_data = (NotImplementedError, DataDependentOutputException, DynamicOutputShapeException)
    if device == "meta" and (isinstance(exc, no_data) or "meta" in first.lower()):
        hint = " (an op the meta device cannot run, e.g. data-dependent code: try device='cpu')"
    return ForwardError(
        f"{given} does not fit {model}: forward failed {where} "
        f"{ran_text}: {type(exc).__name__}: {first}{hint}"
    )
