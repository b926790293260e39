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
    "BUILTIN_MODELS",
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
BUILTIN_MODELS: tuple[str, ...] = ("vgg19", "revvgg", "irevvgg")


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
