"""Every argument check of memprof, in one place: :class:`UsageError` and the parsers.

A public entry point (``layer_table``, ``profile_step``, ``sweep``, ``compare_strategies``,
``train``) checks all of its arguments with these functions before any work starts; the CLI
parses strings and hands them to the entry point, which checks them once. Each message names
the bad value and the allowed ones. The CLI turns a :class:`UsageError` into one line on
stderr and exit code 2.

This module sits at the bottom of the package (beside :mod:`memprof.vocabulary`): checks that
depend on a registry (model or strategy names) take the allowed names as an argument.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # NOTE [ Starting without torch ] (vocabulary): imported where a check needs it
    import torch

from .units import parse_bytes
from .vocabulary import (
    AMP_MODES,
    DTYPE_NAMES,
    FORMATS,
    MODEL_OPTIONS,
    MODES,
    OPTIMIZERS,
    TRAIN_DATASETS,
    TRAIN_DEVICES,
    Mode,
)

__all__ = [
    "BATCH_SIZE_LIMIT",
    "TRAIN_CHECKED",
    "UsageError",
    "check_amp_device",
    "check_choice",
    "check_device",
    "check_format",
    "check_non_negative_int",
    "check_optimizer",
    "check_output_dir",
    "check_output_file",
    "check_positive_int",
    "check_train_settings",
    "check_vit_shape",
    "parse_batch_sizes",
    "parse_dtype",
    "parse_input_shape",
    "parse_memory",
    "parse_mode",
    "parse_model_options",
    "parse_names",
]

#: The largest batch size a sweep or a fit may probe.
BATCH_SIZE_LIMIT = 1 << 24


class UsageError(ValueError):
    """Bad input from a user: the message names the bad value and the allowed ones."""


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise UsageError listing them."""
    allowed = list(allowed)
    if value not in allowed:
        raise UsageError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as int if it is a positive integer, else raise UsageError."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(str(value))
        except ValueError:
            raise UsageError(f"{name} must be a positive integer, got {value!r}") from None
        value = as_int
    if value <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative_int(name: str, value: Any) -> int:
    """Return ``value`` as int if it is an integer >= 0 (``"3"`` is accepted), else raise UsageError."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise UsageError(f"{name} must be a non-negative integer, got {value!r}") from None
    if value < 0:
        raise UsageError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_format(fmt: Any, allowed: Sequence[str] = FORMATS) -> str:
    """An output format from ``allowed`` (default: text, markdown, csv, json)."""
    return str(check_choice("format", str(getattr(fmt, "value", fmt)), allowed))


def parse_mode(mode: Any) -> Mode:
    """``"measured"`` or ``"estimated"`` (or a :class:`~memprof.vocabulary.Mode`) -> Mode."""
    return Mode(check_choice("mode", str(getattr(mode, "value", mode)), MODES))


def check_optimizer(name: Any) -> str:
    """``sgd``, ``adam`` or ``adamw``."""
    return str(check_choice("optimizer", name, OPTIMIZERS))


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a dtype name (``float32``, ``bfloat16``, ``float16``) or dtype to ``torch.dtype``.

    Raises:
        UsageError: for a name or dtype outside :data:`memprof.vocabulary.DTYPES`.
    """
    import torch

    from .vocabulary import DTYPES

    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise UsageError(f"unsupported dtype {name}; allowed: {', '.join(DTYPE_NAMES)}")
        return name
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPE_NAMES)}") from None


def check_device(device: Any, *, needs_cuda_here: bool) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` -> ``torch.device``.

    Args:
        device: the device asked for.
        needs_cuda_here: a CUDA device must exist on this machine (a measured step or a timing;
            an estimate needs none). A bare ``cuda`` then becomes the current device.

    Raises:
        UsageError: for another device, or CUDA asked for where there is none.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N") from None
    check_choice("device type", dev.type, ("cpu", "cuda"))
    if dev.type == "cuda" and needs_cuda_here and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available; use --estimate or --device cpu")
    if dev.type == "cuda" and dev.index is None and needs_cuda_here:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def parse_input_shape(value: Any) -> tuple[int, ...]:
    """``"3,32,32"`` or ``(3, 32, 32)`` -> ``(3, 32, 32)``.

    Raises:
        UsageError: unless it is one or more positive integers.
    """
    text = value if isinstance(value, str) else None
    try:
        parts = [p for p in value.replace("x", ",").split(",")] if text is not None else list(value)
        shape = tuple(int(str(p).strip()) for p in parts)
        if not shape or any(v <= 0 for v in shape) or any(isinstance(p, bool) for p in parts):
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(
            f"input shape {value!r} must be positive integers separated by commas, e.g. 3,32,32"
        ) from None
    return shape


def parse_memory(text: str | int) -> int:
    """A memory budget (``16GiB``, ``16GB``, ``512MiB``, bytes) in bytes; see :func:`memprof.units.parse_bytes`."""
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_names(value: str | Sequence[str], what: str, allowed: Sequence[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> the checked names, none repeated.

    Raises:
        UsageError: for an empty list, an unknown name (listing the allowed ones) or a repeat.
    """
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    if not parts or any(p == "" for p in parts):
        raise UsageError(f"{what}s {value!r} must be a comma-separated list of names; allowed: {', '.join(allowed)}")
    for p in parts:
        check_choice(what, p, allowed)
    dup = sorted({p for p in parts if parts.count(p) > 1})
    if dup:
        raise UsageError(f"{what} {dup[0]!r} is listed twice in {value!r}")
    return parts


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _option_value(model: str, name: str, text: str, default: Any) -> Any:
    """One option's value read as its default's type (bool, positive int, float or string)."""
    what = f"model option {name}={text!r} of {model!r}"
    if isinstance(default, bool):
        if text.lower() not in _TRUE + _FALSE:
            raise UsageError(f"{what} must be true or false")
        return text.lower() in _TRUE
    if isinstance(default, int):
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{what} must be a positive integer (default: {default})") from None
        if value <= 0:
            raise UsageError(f"{what} must be a positive integer (default: {default})")
        return value
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"{what} must be a number (default: {default})") from None
    return text


def parse_model_options(specs: Sequence[str] | Mapping[str, Any] | None, model: str,
                        accepted: Mapping[str, Any]) -> dict[str, Any]:
    """``["depth=6", "reversible=false"]`` -> ``{"depth": 6, "reversible": False}``, checked by name and type.

    Only the names and the types are checked here (no torch); the builder checks how the values
    go together (a ViT width divisible by its heads) through
    :func:`memprof.models.registry.check_model_options` before anything is built.

    Args:
        specs: ``NAME=VALUE`` strings (the CLI's repeatable ``--model-option``), or a mapping of
            values already typed; None or empty: no options.
        model: the registered model's name, for the messages.
        accepted: option name -> default (:data:`memprof.vocabulary.MODEL_OPTIONS`); a value
            is read as its default's type.

    Returns:
        The options, in the order given.

    Raises:
        UsageError: for a string not of the form NAME=VALUE, an option the model does not take
            (listing the ones it takes), an option given twice, a value of the wrong type, or
            values that do not go together where the rule is plain arithmetic (a ViT width not
            divisible by its heads: :func:`check_vit_shape`, the builders' own check).
    """
    options: dict[str, Any] = {}
    items = list(specs.items()) if isinstance(specs, Mapping) else [(None, s) for s in specs or ()]
    for name, spec in items:
        if name is None:
            name, sep, spec = str(spec).partition("=")
            name = name.strip()
            if not sep or not name or not spec.strip():
                raise UsageError(f"model option {str(name) + sep + str(spec)!r} must be NAME=VALUE, e.g. depth=6")
        if name not in accepted:
            raise UsageError(f"model {model!r} has no option {name!r}; allowed: {', '.join(accepted) or 'none'}")
        if name in options:
            raise UsageError(f"model option {name!r} is given twice")
        options[name] = _option_value(model, name, spec.strip(), accepted[name]) if isinstance(spec, str) else spec
    if model in _VIT_MODELS:  # NOTE [ Starting without torch ]: the builders' check, before torch
        defaults = {k: v for k, v in MODEL_OPTIONS[model].items() if k != "reversible"}
        check_vit_shape({**defaults, **{k: v for k, v in options.items() if k != "reversible"}})
    elif model == "vgg19":  # the same, for VGG-19's one option
        check_vgg_options(options)
    return options


def check_vgg_options(options: Mapping[str, Any]) -> None:
    """Check VGG-19's builder options (``classifier_input_gain``: a positive, finite number) without torch.

    Raises:
        UsageError: for a gain that is not a number (a bool is not one), not positive or not finite.
    """
    gain = options.get("classifier_input_gain", 1.0)
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0 < gain < math.inf:
        raise UsageError(f"model option classifier_input_gain of 'vgg19' must be a positive number, got {gain!r}")


#: The built-in models whose options are a ViT's shape (:data:`memprof.vocabulary.MODEL_OPTIONS`).
_VIT_MODELS = ("vit", "revvit")

#: A ViT's shape: the fields of ``memprof.models.vit.ViTConfig``.
_VIT_FIELDS = ("width", "depth", "heads", "patch", "mlp_ratio", "image_size", "in_channels")


def check_vit_shape(shape: Mapping[str, Any]) -> None:
    """Check a ViT's shape (every field of ``ViTConfig``) without building or importing anything.

    Raises:
        UsageError: for a field that is not a positive integer, a width not divisible by the
            heads, or an image size not divisible by the patch; the message names the values.
    """
    for name in _VIT_FIELDS:
        value = shape[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UsageError(f"ViT {name} must be a positive integer, got {value!r}")
    if shape["width"] % shape["heads"]:
        raise UsageError(f"ViT width {shape['width']} is not divisible by heads {shape['heads']}; "
                         f"use a width that is a multiple of {shape['heads']}")
    if shape["image_size"] % shape["patch"]:
        raise UsageError(f"input size {shape['image_size']} is not divisible by the patch size {shape['patch']}")


def _check_float(name: str, value: Any, *, low: float, low_open: bool, high: float | None = None,
                 high_open: bool = True, allowed: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number ({allowed}), got {value!r}") from None
    bad = (
        not math.isfinite(v)
        or (v <= low if low_open else v < low)
        or (high is not None and (v >= high if high_open else v > high))
    )
    if bad:
        raise UsageError(f"{name} must be {allowed}, got {value!r}")
    return v


def _check_count(name: str, value: Any, zero: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{name} must be an integer >= 0{zero}, got {value!r}")
    return value


#: The settings of ``memprof.train.TrainConfig`` that :func:`check_train_settings` checks.
TRAIN_CHECKED = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "warmup_epochs", "gamma",
                 "checkpoint_every", "limit_batches", "num_workers", "synthetic_size", "num_classes", "amp",
                 "device", "dataset", "model_options")


def check_train_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers and words of a training run, checked without torch, files or the network.

    ``memprof.train.check_train_config`` runs these checks (and then those that need torch or
    the disk: CUDA, the data, the resume file, the output directory); ``memprof train`` runs
    them before it imports torch, so a bad number is answered at once, with the same line.

    Args:
        settings: a value for every name of :data:`TRAIN_CHECKED` (TrainConfig's field names).

    Returns:
        The settings normalised (numbers as int or float, ``amp`` as its string).

    Raises:
        UsageError: for non-positive epochs, batch size, learning rate, lr step, synthetic size,
            number of classes or limit of batches; momentum outside [0, 1); negative weight
            decay, warm-up epochs, checkpoint interval or workers; gamma outside (0, 1]; an
            unknown amp mode, device or dataset; fp16 asked for on the CPU; model options that
            are no mapping or hold ``reversible`` (a setting of its own). The model's name and
            its options' names and values are checked where the model registry is known.
    """
    s = {name: settings[name] for name in TRAIN_CHECKED}
    s["epochs"] = check_positive_int("epochs", s["epochs"])
    s["batch_size"] = check_positive_int("batch size", s["batch_size"])
    s["lr"] = _check_float("learning rate", s["lr"], low=0.0, low_open=True, allowed="a positive number")
    s["momentum"] = _check_float("momentum", s["momentum"], low=0.0, low_open=False, high=1.0, allowed="in [0, 1)")
    s["weight_decay"] = _check_float("weight decay", s["weight_decay"], low=0.0, low_open=False,
                                     allowed="a number >= 0")
    s["lr_step"] = check_positive_int("lr step", s["lr_step"])
    s["warmup_epochs"] = _check_count("warmup epochs", s["warmup_epochs"], " (0: no warm-up)")
    s["gamma"] = _check_float("gamma", s["gamma"], low=0.0, low_open=True, high=1.0, high_open=False,
                              allowed="in (0, 1]")
    s["checkpoint_every"] = _check_count("checkpoint every", s["checkpoint_every"], " (0: only at the end)")
    if s["limit_batches"] is not None:
        s["limit_batches"] = check_positive_int("limit batches", s["limit_batches"])
    s["num_workers"] = _check_count("num workers", s["num_workers"], "")
    s["synthetic_size"] = check_positive_int("synthetic size", s["synthetic_size"])
    s["num_classes"] = check_positive_int("num classes", s["num_classes"])
    s["amp"] = str(check_choice("amp mode", str(getattr(s["amp"], "value", s["amp"])), AMP_MODES))
    check_choice("device", s["device"], TRAIN_DEVICES)
    check_amp_device(s["amp"], s["device"])
    check_choice("dataset", s["dataset"], TRAIN_DATASETS)
    options = s["model_options"] if s["model_options"] is not None else {}
    if not isinstance(options, Mapping):
        raise UsageError(f"model options must be a mapping of option name to value, got {options!r}")
    if "reversible" in options:
        raise UsageError("model option 'reversible' is the training's own setting: use --reversible or "
                         "--no-reversible (TrainConfig.reversible)")
    s["model_options"] = dict(options)
    return s


def check_amp_device(amp: str, device: str) -> None:
    """fp16 training needs CUDA (a gradient scaler); ``auto`` is checked once it is resolved."""
    if amp == "fp16" and device not in ("cuda", "auto"):
        raise UsageError("amp mode 'fp16' needs CUDA (float16 training uses a CUDA gradient scaler); "
                         "on the CPU use: off, bf16")


# NOTE [ Batch-size progressions ]
# "--batch-sizes 1,2,4,...,1024" is accepted as people write it: "..." continues the terms
# before it up to the term after it. The progression is geometric (integer ratio of the first
# two terms) when it lands exactly on the last term, else arithmetic when that lands on it;
# every term written before "..." must belong to the chosen progression. Anything else is an
# error that says what to write, never a silent guess: "1,2,...,10" is 1..10 (geometric would
# miss 10), "1,2,...,8" is 1,2,4,8 (geometric first), "1,3,...,10" is refused.
def parse_batch_sizes(value: str | int | Sequence[int]) -> list[int]:
    """Parse batch sizes: ``"1,8,64"``, ``"1,2,4,...,1024"`` (NOTE [ Batch-size progressions ]).

    Args:
        value: comma-separated positive integers, optionally with one ``...``; or integers.

    Returns:
        The batch sizes in the order given.

    Raises:
        UsageError: for an empty or malformed list, a non-positive or repeated size, or a
            progression that does not reach its last term.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    hint = "e.g. 1,8,64,512 or 1,2,4,...,1024"
    if not parts or parts == [""]:
        raise UsageError(f"batch sizes {value!r} are empty; give positive integers separated by commas, {hint}")
    dots = parts.count("...")
    if dots > 1 or (dots == 1 and not (parts.index("...") >= 2 and parts.index("...") == len(parts) - 2)):
        raise UsageError(f"batch sizes {value!r}: '...' needs two or more sizes before it and one after, {hint}")
    nums: list[int] = []
    for p in parts:
        if p == "...":
            continue
        if not re.fullmatch(r"[0-9]+", p) or int(p) <= 0:
            raise UsageError(f"batch size {p!r} in {value!r} is not a positive integer; {hint}")
        nums.append(int(p))
    if any(n > BATCH_SIZE_LIMIT for n in nums):
        raise UsageError(f"batch size {max(nums)} in {value!r} is above the limit {BATCH_SIZE_LIMIT}")
    if dots:
        nums = _expand(nums[:-1], nums[-1], str(value))
    dup = sorted({n for n in nums if nums.count(n) > 1})
    if dup:
        raise UsageError(f"batch size {dup[0]} is listed twice in {value!r}")
    return nums


def _expand(head: list[int], last: int, text: str) -> list[int]:
    """The progression through ``head`` that ends exactly on ``last`` (geometric first)."""
    a, b = head[0], head[1]
    candidates: list[list[int]] = []
    if b % a == 0 and b // a >= 2:
        seq, r = [a], b // a
        while seq[-1] < last:
            seq.append(seq[-1] * r)
        candidates.append(seq)
    if b > a:
        candidates.append(list(range(a, last + 1, b - a)))
    for seq in candidates:
        if seq and seq[-1] == last and seq[: len(head)] == head:
            return seq
    raise UsageError(
        f"batch sizes {text!r}: the sizes before '...' do not continue to {last} by a constant ratio "
        "or step; list the sizes, or write e.g. 1,2,4,...,1024 or 16,32,48,...,128"
    )


def check_output_dir(out: str | os.PathLike[str]) -> Path:
    """Check that ``out`` is (or can be created as) a writable directory, before any work.

    Creates the directory if missing (a probe file is written and removed).

    Raises:
        UsageError: naming the directory and why it cannot be written.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output directory {str(out)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".memprof-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"output directory {str(out)!r} cannot be written: {exc.strerror or exc}") from None
    return path


def check_output_file(out: str | os.PathLike[str], *, suffix: str | None = None, what: str = "output file") -> Path:
    """Check that ``out`` can be written as a file (its directory is created and probed).

    Args:
        out: the file to write later.
        suffix: the required extension, e.g. ``".png"`` (case-insensitive).
        what: how messages name the file (e.g. ``"--timeline"``).

    Raises:
        UsageError: for a wrong extension, a directory, or a place that cannot be written.
    """
    path = Path(out)
    if suffix is not None and not str(out).lower().endswith(suffix):
        raise UsageError(f"{what} {str(out)!r} must name a {suffix} file")
    if path.is_dir():
        raise UsageError(f"{what} {str(out)!r} is a directory, not a file")
    try:
        check_output_dir(path.parent if str(path.parent) else ".")
    except UsageError as exc:  # name the file the user gave, not only its directory
        raise UsageError(f"{what} {str(out)!r} cannot be written: {exc}") from None
    return path
