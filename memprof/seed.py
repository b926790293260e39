"""The deck's two tables, held as data and labelled *seed*: never memprof's output.

``../shared/seed/reversible-nets-slides.md`` ("Reversible Nets", EECE 7398) tabulates VGG-19
("VGG-19 Details") and Rev-VGG ("Rev-VGG Details") layer by layer. The rows below are the
deck's rows exactly as published, slips included; memprof compares its own tables against
them (:mod:`memprof.aggregation.seed_comparison`) and names the cause of every difference.

# NOTE [ Reading the deck's tables ]
# The slide text runs some cells together: in the VGG-19 table the first conv reads
# "3		1 (64,32,32)", i.e. kernel 3, an empty column, then "1 (64,32,32)" where the stride 1 and
# the output image share a cell. We read that as kernel 3, stride 1, output (64,32,32), and the
# max-pool rows "2		2 (64,16,16)" as kernel 2, stride 2. Every other empty cell stays empty
# (None): from the second stage on, the VGG-19 convolutions have no kernel or stride, and the
# Rev-VGG max-pools have a stride but no kernel. Shapes are kept as the deck prints them
# (strings such as "(512,4,4)" or "512"); :func:`parse_shape` reads them. The deck writes "MB"
# for its totals; the figures are MiB (2**20 bytes): 20,565,834 * 4 B = 78.45 MiB.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

__all__ = ["SeedRow", "SeedTable", "SEED_TABLES", "get_seed_table", "parse_shape"]

SOURCE = "../shared/seed/reversible-nets-slides.md"


@dataclass(frozen=True)
class SeedRow:
    """One row of a deck table, as published (None for an empty cell)."""

    input_shape: str
    layer: str
    in_channels: int | None
    out_channels: int | None
    kernel: int | None
    stride: int | None
    output_shape: str
    params: int
    activations: int

    def to_dict(self) -> dict[str, object]:
        """The row as a plain dict (JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class SeedTable:
    """A deck table: its rows and its printed totals, all as published."""

    model: str
    title: str
    rows: tuple[SeedRow, ...]
    params: int
    activations: int
    param_mib: float
    activation_mib: float
    batch_size: int
    printed_param_memory: str
    printed_activation_memory: str

    def to_dict(self) -> dict[str, object]:
        """The JSON form used under the ``seed`` key of ``memprof table --format json``."""
        return {
            "source": f"{SOURCE}, slide '{self.title}'",
            "params": self.params,
            "activations": self.activations,
            "param_mib": self.param_mib,
            "activation_mib": self.activation_mib,
            "batch_size": self.batch_size,
            "rows": [r.to_dict() for r in self.rows],
        }


def parse_shape(text: str) -> tuple[int, ...]:
    """``"(512,4,4)"`` -> ``(512, 4, 4)``; ``"512"`` -> ``(512,)``."""
    return tuple(int(v) for v in re.findall(r"\d+", text))


def _rows(spec: str) -> tuple[SeedRow, ...]:
    def cell(v: str) -> int | None:
        return None if v == "" else int(v)

    rows = []
    for line in spec.strip().splitlines():
        inp, layer, cin, cout, k, s, out, params, acts = (c.strip() for c in line.split("|"))
        rows.append(SeedRow(inp, layer, cell(cin), cell(cout), cell(k), cell(s), out, int(params), int(acts)))
    return tuple(rows)


# input | layer | in ch | out ch | kernel | stride | output | #params | #activations
_VGG19 = """
(3,32,32)   | Conv2d      | 3   | 64  | 3 | 1 | (64,32,32)  | 1792    | 65536
(64,32,32)  | BatchNorm2d | 64  | 64  |   |   | (64,32,32)  | 128     | 65536
(64,32,32)  | Conv2d      | 64  | 64  | 3 | 1 | (64,32,32)  | 36928   | 65536
(64,32,32)  | BatchNorm2d | 64  | 64  |   |   | (64,32,32)  | 128     | 65536
(64,32,32)  | Maxpool2d   |     |     | 2 | 2 | (64,16,16)  | 0       | 16384
(64,16,16)  | Conv2d      | 64  | 128 |   |   | (128,16,16) | 73856   | 32768
(128,16,16) | BatchNorm2d | 128 | 128 |   |   | (128,16,16) | 256     | 32768
(128,16,16) | Conv2d      | 128 | 128 |   |   | (128,16,16) | 147584  | 32768
(128,16,16) | BatchNorm2d | 128 | 128 |   |   | (128,16,16) | 256     | 32768
(128,16,16) | Maxpool2d   |     |     | 2 | 2 | (128,8,8)   | 0       | 8192
(128,8,8)   | Conv2d      | 128 | 256 |   |   | (256,8,8)   | 295168  | 16384
(256,8,8)   | BatchNorm2d | 256 | 256 |   |   | (256,8,8)   | 512     | 16384
(256,8,8)   | Conv2d      | 256 | 256 |   |   | (256,8,8)   | 590080  | 16384
(256,8,8)   | BatchNorm2d | 256 | 256 |   |   | (256,8,8)   | 512     | 16384
(256,8,8)   | Conv2d      | 256 | 256 |   |   | (256,8,8)   | 590080  | 16384
(256,8,8)   | BatchNorm2d | 256 | 256 |   |   | (256,8,8)   | 512     | 16384
(256,8,8)   | Conv2d      | 256 | 256 |   |   | (256,8,8)   | 590080  | 16384
(256,8,8)   | BatchNorm2d | 256 | 256 |   |   | (256,8,8)   | 512     | 16384
(256,8,8)   | Maxpool2d   |     |     | 2 | 2 | (256,4,4)   | 0       | 4096
(512,4,4)   | Conv2d      | 256 | 512 |   |   | (512,4,4)   | 1180160 | 8192
(512,4,4)   | BatchNorm2d | 512 | 512 |   |   | (512,4,4)   | 1024    | 8192
(512,4,4)   | Conv2d      | 512 | 512 |   |   | (512,4,4)   | 2359808 | 8192
(512,4,4)   | BatchNorm2d | 512 | 512 |   |   | (512,4,4)   | 1024    | 8192
(512,4,4)   | Conv2d      | 512 | 512 |   |   | (512,4,4)   | 2359808 | 8192
(512,4,4)   | BatchNorm2d | 512 | 512 |   |   | (512,4,4)   | 1024    | 8192
(512,4,4)   | Conv2d      | 512 | 512 |   |   | (512,4,4)   | 2359808 | 8192
(512,4,4)   | BatchNorm2d | 512 | 512 |   |   | (512,4,4)   | 1024    | 8192
(512,4,4)   | Maxpool2d   |     |     | 2 | 2 | (512,2,2)   | 0       | 2048
(512,2,2)   | Conv2d      | 512 | 512 |   |   | (512,2,2)   | 2359808 | 2048
(512,2,2)   | BatchNorm2d | 512 | 512 |   |   | (512,2,2)   | 1024    | 2048
(512,2,2)   | Conv2d      | 512 | 512 |   |   | (512,2,2)   | 2359808 | 2048
(512,2,2)   | BatchNorm2d | 512 | 512 |   |   | (512,2,2)   | 1024    | 2048
(512,2,2)   | Conv2d      | 512 | 512 |   |   | (512,2,2)   | 2359808 | 2048
(512,2,2)   | BatchNorm2d | 512 | 512 |   |   | (512,2,2)   | 1024    | 2048
(512,2,2)   | Maxpool2d   |     |     | 2 | 2 | (512,1,1)   | 0       | 512
512         | Linear      | 512 | 512 |   |   | 512         | 262656  | 512
512         | Linear      | 512 | 512 |   |   | 512         | 262656  | 512
512         | Linear      | 512 | 10  |   |   | 10          | 5130    | 10
"""

_REVVGG = """
(3,32,32)   | Conv2d       | 3   | 64  | 3 | 1 | (64,32,32)  | 1792    | 65536
(64,32,32)  | Maxpool2d    |     |     |   | 2 | (64,16,16)  | 0       | 16384
(64,16,16)  | RevBlock_1   | 64  | 128 |   |   | (128,16,16) | 517632  | 0
(128,16,16) | Maxpool2d    |     |     |   | 2 | (128,8,8)   | 0       | 16384
(128,8,8)   | RevBlock_2   | 128 | 256 |   |   | (256,8,8)   | 2067456 | 0
(256,8,8)   | Maxpool2d    |     |     |   | 2 | (256,4,4)   | 0       | 4096
(256,4,4)   | RevBlock_3   | 256 | 512 |   |   | (512,4,4)   | 8263680 | 0
(512,4,4)   | Maxpool2d    |     |     |   | 2 | (512,2,2)   | 0       | 2048
(512,2,2)   | RevBlock_4   | 512 | 512 |   |   | (512,2,2)   | 9443328 | 0
(512,2,2)   | Maxpool2d    |     |     |   | 2 | (512,1,1)   | 0       | 512
512         | Linear block | 512 | 512 |   |   | 512         | 525312  | 512
512         | Linear       | 512 | 10  |   |   | 10          | 5130    | 10
"""

#: model name -> the deck's table for it (seed data, as published).
SEED_TABLES: dict[str, SeedTable] = {
    "vgg19": SeedTable(
        model="vgg19",
        title="VGG-19 Details",
        rows=_rows(_VGG19),
        params=20565834,
        activations=638474,
        param_mib=78.45,
        activation_mib=311.75,
        batch_size=128,
        printed_param_memory="78.45MB",
        printed_activation_memory="311.75 MB",
    ),
    "revvgg": SeedTable(
        model="revvgg",
        title="Rev-VGG Details",
        rows=_rows(_REVVGG),
        params=20824330,
        activations=105482,
        param_mib=79.43,
        activation_mib=51.50,
        batch_size=128,
        printed_param_memory="79.43MB",
        printed_activation_memory="51.50 MB",
    ),
}


def get_seed_table(model: str) -> SeedTable | None:
    """The deck's table for ``model``, or None when the deck has none."""
    return SEED_TABLES.get(model)
