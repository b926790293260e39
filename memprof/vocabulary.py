"""The fixed words of memprof, at the bottom of the package: every layer may import them.

Each vocabulary is a string enum, so a value compares equal to its spelling (``Mode.MEASURED ==
"measured"``), prints as it (``str(Mode.MEASURED) == "measured"``) and a typo fails loudly
when it is looked up (``Mode("measure")`` raises). Nothing here imports another memprof module.
"""

from __future__ import annotations

from enum import Enum

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # NOTE [ Starting without torch ]: the words are plain strings
    import torch

__all__ = [
    "Category",
    "Word",
    "AMP_MODES",
    "BUILTIN_MODELS",
    "COMPARE_FAMILIES",
    "COMPARE_FIXED_OPTIONS",
    "COMPARE_REFERENCES",
    "MODEL_OPTIONS",
    "Strategy",
    "SWEEP_BATCH_SIZES",
    "SWEEP_MODELS",
    "TRAIN_DATASETS",
    "TRAIN_DEFAULTS",
    "TRAIN_DEVICES",
    "DTYPES",
    "DTYPE_NAMES",
    "Format",
    "FORMATS",
    "Mode",
    "MODES",
    "Optimizer",
    "OPTIMIZERS",
    "Phase",
    "PHASES",
    "STATE_CATEGORIES",
    "TABLE_DEVICES",
    "TRACKED_CATEGORIES",
    "TrackMode",
    "dtype_name",
]


class Word(str, Enum):
    """A string enum that prints as its value (``f"{Mode.MEASURED}" == "measured"``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Category(Word):
    """Where a live byte belongs. ``unattributed`` is what the allocator saw and no tensor owns."""

    PARAMETERS = "parameters"
    GRADIENTS = "gradients"
    OPTIMIZER_STATE = "optimizer_state"
    ACTIVATIONS = "activations"
    TEMPORARIES = "temporaries"
    INPUTS = "inputs"
    UNATTRIBUTED = "unattributed"


#: Categories that persist across steps (model and optimizer state); everything else is what
#: the "activation peak" counts.
STATE_CATEGORIES: tuple[Category, ...] = (Category.PARAMETERS, Category.GRADIENTS, Category.OPTIMIZER_STATE)

#: The categories a storage tracker attributes (all but ``unattributed``), in display order.
TRACKED_CATEGORIES: tuple[Category, ...] = (
    Category.PARAMETERS,
    Category.GRADIENTS,
    Category.OPTIMIZER_STATE,
    Category.ACTIVATIONS,
    Category.TEMPORARIES,
    Category.INPUTS,
)


class Mode(Word):
    """How a memory figure was obtained: measured at an allocator, or estimated without memory."""

    MEASURED = "measured"
    ESTIMATED = "estimated"


#: The accepted ``mode`` values of the public API.
MODES: tuple[str, ...] = tuple(m.value for m in Mode)


class Phase(Word):
    """The phases of one training step, in the order they run."""

    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)


class TrackMode(Word):
    """How much ``memprof.track()`` records.

    ``fast`` (default): allocator events + module, step and saved-tensor hooks; temporaries
    include kernel workspaces. ``fine``: also a per-op dispatch mode that sees which blocks a
    tensor owns: kernel workspaces are reported as ``unattributed`` (slower: Python per op).
    """

    FAST = "fast"
    FINE = "fine"


class Format(Word):
    """Output formats of every result's ``render(format)``."""

    TEXT = "text"
    MARKDOWN = "markdown"
    CSV = "csv"
    JSON = "json"


#: The accepted ``--format`` values.
FORMATS: tuple[str, ...] = tuple(f.value for f in Format)


class Optimizer(Word):
    """Optimizers a training step can use; the deck's recipe is SGD with momentum 0.9."""

    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


OPTIMIZERS: tuple[str, ...] = tuple(o.value for o in Optimizer)

#: Devices the per-layer table can record on (``meta``: shapes and storages, no arithmetic).
TABLE_DEVICES: tuple[str, ...] = ("meta", "cpu", "cuda")

#: dtype names accepted on the command line and in the API (``DTYPES`` maps them to torch dtypes).
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")

#: The registered models memprof ships (``memprof.models.list_models()`` holds them and any
#: registered later); here so that ``--help`` names them without importing torch.
BUILTIN_MODELS: tuple[str, ...] = ("vgg19", "revvgg", "irevvgg", "vit", "revvit")

#: The ViT builders' options and defaults (``memprof.models.vit.ViTConfig``'s fields).
_VIT_OPTIONS: dict[str, Any] = {"width": 192, "depth": 12, "heads": 3, "patch": 4, "mlp_ratio": 4,
                                "image_size": 32, "in_channels": 3}

#: Built-in model -> the options ``get_model(name, **options)`` takes, with their defaults (the
#: CLI's ``--model-option NAME=VALUE``; a value is read as the default's type). ``reversible``
#: (False: the plain-autograd twin, same weights) is offered where the model has reversible
#: sequences. ``tests/test_startup.py`` holds this table to the builders.
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "vgg19": {"classifier_input_gain": 0.2},  # memprof.models.vgg.CLASSIFIER_INPUT_GAIN
    "revvgg": {"reversible": True},
    "irevvgg": {"reversible": True},
    "vit": dict(_VIT_OPTIONS),
    "revvit": {**_VIT_OPTIONS, "reversible": True},
}


class Strategy(Word):
    """The memory-saving strategies ``memprof compare`` knows (string values, so a typo fails loudly)."""

    PLAIN = "plain"
    CHECKPOINT_STAGES = "checkpoint-stages"
    CHECKPOINT_SQRT = "checkpoint-sqrt"
    REVERSIBLE = "reversible"
    INVERTIBLE = "invertible"
    OFFLOAD = "offload"


#: Model family of ``memprof compare --family`` -> its strategies in display order; the first
#: family is the default (``memprof.aggregation.compare.FAMILIES`` describes each strategy).
COMPARE_FAMILIES: dict[str, tuple[str, ...]] = {
    "vgg": ("plain", "checkpoint-stages", "checkpoint-sqrt", "reversible", "invertible", "offload"),
    "vit": ("plain", "checkpoint-stages", "checkpoint-sqrt", "reversible", "offload"),
}
#: Each family's reference model (its ``plain`` strategy): the options a comparison accepts are its.
COMPARE_REFERENCES: dict[str, str] = {"vgg": "vgg19", "vit": "vit"}
#: Model options a comparison does not take: each strategy decides whether its model runs
#: reversibly, and every strategy takes the same CIFAR-sized input.
COMPARE_FIXED_OPTIONS: tuple[str, ...] = ("reversible", "image_size", "in_channels")

#: ``memprof sweep``'s default models (the first is the reference) and batch sizes.
SWEEP_MODELS: tuple[str, ...] = ("vgg19", "revvgg", "irevvgg")
SWEEP_BATCH_SIZES: tuple[int, ...] = (1, 8, 64, 512)

#: ``memprof train``'s choices and defaults (``memprof.train.config.TrainConfig``'s, the deck's
#: recipe), here so that ``memprof train --help`` names them without importing torch.
TRAIN_DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")
TRAIN_DATASETS: tuple[str, ...] = ("cifar10", "digits")
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "revvgg", "epochs": 300, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
    "lr_step": 50, "warmup_epochs": 0, "gamma": 0.1, "dataset": "cifar10", "data_dir": "./data",
    "download": True, "synthetic_size": 512, "device": "auto", "amp": "off", "reversible": True,
    "checkpoint_every": 0, "num_workers": 0, "seed": 0, "num_classes": 10,
}


# NOTE [ Starting without torch ]
# ``import torch`` costs seconds. The CLI's help and its argument errors, and ``import memprof``,
# need none of it, so nothing at this layer imports torch at module level: ``DTYPES`` (name ->
# torch.dtype) is built on first use through the module's ``__getattr__``.
def __getattr__(name: str) -> Any:
    if name == "DTYPES":
        import torch

        table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        globals()["DTYPES"] = table
        return table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dtype_name(dtype: torch.dtype | str) -> str:
    """The short name of a dtype: ``torch.float32`` -> ``"float32"`` (a name is returned as is)."""
    if isinstance(dtype, str):
        return dtype
    table: dict[str, Any] = __getattr__("DTYPES") if "DTYPES" not in globals() else globals()["DTYPES"]
    for name, d in table.items():
        if d == dtype:
            return name
    return str(dtype).replace("torch.", "")
