"""``layer_table``: the per-layer table of a model (the deck's columns beside what autograd saves).

:func:`check_table_args` checks every argument before any work; :func:`run_layer_table`
records one forward (:mod:`memprof.recording.layers`), aggregates it
(:mod:`memprof.aggregation.layer_table`, with the seed comparison for the models the deck
tabulates) and returns the renderable :class:`~memprof.rendering.layer_table.LayerTable`.
:func:`layer_table` is the two in one call; the CLI calls them apart, so that a
``package.module:factory`` model is built only after every other argument is known to be good.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..aggregation.layer_table import build_layer_table
from ..aggregation.table_rows import shape_text
from ..recording.layers import record_layers
from ..rendering.layer_table import LayerTable
from ..seed import SeedTable, get_seed_table
from ..validation import (
    UsageError,
    check_choice,
    check_non_negative_int,
    check_positive_int,
    parse_input_shape,
)
from ..vocabulary import DTYPES, TABLE_DEVICES, dtype_name

__all__ = ["TableArgs", "check_table_args", "layer_table", "run_layer_table"]


@dataclass(frozen=True)
class TableArgs:
    """Checked arguments of :func:`layer_table`.

    ``model`` is the registered name, or None for a module the caller passes to
    :func:`run_layer_table`; ``model_options`` are its builder's options, as sorted pairs.
    """

    model: str | None
    input_shape: tuple[int, ...]
    batch_size: int
    dtype: torch.dtype
    depth: int | None
    device: str
    seed: SeedTable | None
    seed_note: str | None
    model_options: tuple[tuple[str, Any], ...] = ()

    @property
    def model_label(self) -> str | None:
        """The registered name with its options, as the table's title shows it: ``revvit (depth=6)``."""
        from ..models.registry import model_label

        return None if self.model is None else model_label(self.model, dict(self.model_options))
    #: example inputs or InputSpecs instead of one float input of ``input_shape`` (as :func:`memprof.profile_step` takes them)
    inputs: Any = None


def _registered(model: str, input_shape: Any, depth: int | None,
                options: Mapping[str, Any]) -> tuple[tuple[int, ...], int | None, SeedTable | None, str | None]:
    """Input shape, depth, seed table and the note on a missing seed comparison of a registered model."""
    from ..models import get_model_info, list_models
    from ..models.registry import check_model_options

    check_choice("model", model, list_models())
    check_model_options(model, options)
    info = get_model_info(model)
    shape = parse_input_shape(input_shape) if input_shape is not None else info.input_shape_for(options)
    seed, seed_note = get_seed_table(model), None
    if depth is None:
        depth = info.table_depth
    elif seed is not None and depth != info.table_depth:
        seed_note = (f"No seed comparison: the deck's table is at the default depth "
                     f"{info.table_depth}, this table at depth {depth}.")
        seed = None
    if seed is not None and options:
        seed_note = "No seed comparison: the deck's table is for the model without options."
        seed = None
    if seed is not None and shape != (3, 32, 32):
        seed_note = f"No seed comparison: the deck's table is for (3,32,32) inputs, not {shape_text([shape])}."
        seed = None
    return shape, depth, seed, seed_note


def check_table_args(
    model: str | nn.Module | None,
    input_shape: Any = None,
    batch_size: Any = 128,
    dtype: Any = "float32",
    depth: Any = None,
    device: str = "meta",
    model_options: Mapping[str, Any] | None = None,
    *,
    inputs: Any = None,
) -> TableArgs:
    """Every check of :func:`layer_table`, in one place, before any work starts.

    Args:
        model: a registered name, an ``nn.Module``, or None for a module that is not built yet
            (the CLI's ``package.module:factory``).
        input_shape, batch_size, dtype, depth, device, model_options, inputs: as for
            :func:`layer_table`.

    Returns:
        The checked :class:`TableArgs`.

    Raises:
        memprof.validation.UsageError: naming the bad value and the allowed ones.
        TypeError: if ``model`` is neither a name nor an ``nn.Module``.
    """
    batch_size = check_positive_int("batch size", batch_size)
    name_of_dtype = check_choice("dtype", dtype_name(dtype), DTYPES)
    check_choice("device", device, TABLE_DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' is not available here; allowed: meta, cpu")
    if depth is not None:
        depth = check_non_negative_int("depth", depth)
    if inputs is not None:
        from .step import check_inputs

        check_inputs(inputs)
    if isinstance(model, str):
        options = dict(model_options or {})
        shape, depth, seed, seed_note = _registered(model, input_shape, depth, options)
        if inputs is not None:  # the deck's table is for its own (3,32,32) input
            shape, seed, seed_note = (), None, None
        return TableArgs(model, shape, batch_size, DTYPES[name_of_dtype], depth, device, seed, seed_note,
                         model_options=tuple(sorted(options.items())), inputs=inputs)
    if model_options:
        raise UsageError("model options are for a registered model; build your nn.Module with the options instead")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a registered name or an nn.Module, got {type(model).__name__}")
    if inputs is not None:
        return TableArgs(None, (), batch_size, DTYPES[name_of_dtype], depth, device, None, None, inputs=inputs)
    if input_shape is None:
        what = "a model" if model is None else f"a {type(model).__name__}"
        raise UsageError(
            f"input shape is required for {what} that is not a registered model, e.g. --input-shape 3,32,32"
        )
    return TableArgs(None, parse_input_shape(input_shape), batch_size, DTYPES[name_of_dtype], depth, device,
                     None, None)


def _build_registered(name: str, device: str, options: Mapping[str, Any]) -> nn.Module:
    """Build a registered model; for a meta pass, directly on the meta device (no weight init)."""
    from ..models import get_model

    if device == "meta":
        try:
            with torch.device("meta"):
                return get_model(name, **options)
        except (NotImplementedError, RuntimeError):  # an initialiser without a meta kernel
            pass
    return get_model(name, **options)


def run_layer_table(args: TableArgs, module: nn.Module | None = None, *, all_rows: bool = False) -> LayerTable:
    """The table for checked arguments (:func:`check_table_args`); nothing is checked again.

    Args:
        args: the checked arguments.
        module: the model when ``args.model`` is None (not a registered name).
        all_rows: show every row: in-place ReLU rows unfolded, empty rows not hidden.

    Returns:
        The :class:`~memprof.rendering.layer_table.LayerTable`.
    """
    if args.model is not None:
        module, name = _build_registered(args.model, args.device, dict(args.model_options)), args.model_label
    else:
        if module is None:
            raise TypeError("run_layer_table needs the module when args.model is None")
        name = type(module).__name__
    recording = record_layers(
        module, args.input_shape, batch_size=args.batch_size, dtype=args.dtype,
        depth=args.depth, device=args.device, model_name=name, inputs=args.inputs,
    )
    notes = [args.seed_note] if args.seed_note else []
    return LayerTable.from_data(build_layer_table(recording, all_rows=all_rows, seed=args.seed, notes=notes))


def layer_table(
    model: str | nn.Module,
    input_shape: Sequence[int] | str | None = None,
    batch_size: int = 128,
    dtype: str | torch.dtype = "float32",
    depth: int | None = None,
    *,
    device: str = "meta",
    all_rows: bool = False,
    model_options: Mapping[str, Any] | None = None,
    inputs: Any = None,
) -> LayerTable:
    """The per-layer table of a model: the deck's columns beside what autograd really saves.

    One training-mode forward (no backward) runs at the batch size; hooks record every row and
    a ``saved_tensors_hooks`` pack hook the bytes autograd saves for it. The model is left
    exactly as it was (weights, buffers, train/eval mode, hooks, RNG state).

    Args:
        model: a registered name (:func:`memprof.models.list_models`) or any ``nn.Module``.
        input_shape: one sample's shape without the batch dimension (``(3, 32, 32)`` or
            ``"3,32,32"``); required for an ``nn.Module``, defaults to the registered one.
        batch_size: the batch the pass runs with (default 128, the deck's).
        dtype: ``float32``, ``bfloat16`` or ``float16``; parameters, buffers and the input are
            converted for the pass (the model itself is not changed).
        depth: rows are the modules whose qualified name has ``depth`` dot-separated parts,
            and leaves above that (like torchinfo's depth). None: the registered model's
            default (the deck's rows), or every leaf for an ``nn.Module``; 0: one row.
        device: ``meta`` (default: exact shapes, dtypes and storages without arithmetic: fake
            CPU tensors that take the CPU's kernels, NOTE [ The meta pass runs on fake CPU
            tensors ]), ``cpu`` or ``cuda`` for a real pass.
        all_rows: show every row: in-place ReLU rows unfolded, empty rows not hidden.
        model_options: options of a registered model's builder (``get_model(name, **options)``:
            ``depth``, ``width``, ``heads``... for ``vit`` and ``revvit``, ``reversible``);
            checked before anything is built.
        inputs: instead of one float input of ``input_shape``: example inputs or
            :class:`~memprof.recording.user_step.InputSpec` s, as :func:`memprof.profile_step`
            takes them (token ids, a dict of tensors, ...).

    Returns:
        A :class:`~memprof.rendering.layer_table.LayerTable`; ``print()`` it, or call
        ``to_dataframe()``, ``to_markdown()``, ``to_csv()``, ``to_json()``, ``render(format)``.

    Raises:
        memprof.validation.UsageError: for a bad argument (naming it and the allowed values), or
            an input shape the model's forward rejects (naming the layer that failed and the
            layers that ran).
        TypeError: if ``model`` is neither a name nor an ``nn.Module``.
    """
    args = check_table_args(model, input_shape, batch_size, dtype, depth, device, model_options, inputs=inputs)
    return run_layer_table(args, None if isinstance(model, str) else model, all_rows=all_rows)
