"""`memprof table`: recording, aggregation, rendering, the seed comparison, reports and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import memprof
from memprof.cli import main
from memprof.errors import UsageError
from memprof.models import get_model, list_models
from memprof.reports.tables import write_table_reports

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_table:tiny_net"


# -- small models -----------------------------------------------------------------------------


class TinyNet(nn.Module):
    """Conv-BN-ReLU(inplace)-pool, torch.flatten in forward, Dropout, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(8 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def tiny_net() -> nn.Module:
    """Factory for the CLI (``tests.test_table:tiny_net``); deterministic weights."""
    torch.manual_seed(0)
    return TinyNet()


class Functional(nn.Module):
    """Functional ops in forward, nn.Flatten, an in-place add, a module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Tanh()  # called twice: one row per call
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 8 * 8, 6)
        self.scale = nn.Parameter(torch.ones(6))  # a parameter used by the container's own ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        y = F.relu(y)  # functional, not in-place: saves its output
        y = y.mul_(2.0)  # in-place op on a non-leaf
        y = self.act(y)
        return torch.sigmoid(self.fc(self.flatten(y))) * self.scale


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.a(x)
        return h, self.b(h)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = TupleOut()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, logits = self.body(x)
        return {"features": h, "logits": logits.relu()}


def measure_saved(model: nn.Module, x: torch.Tensor) -> int:
    """Independent check: bytes autograd saves (data pointers, parameters and buffers excluded)."""
    state = {p.untyped_storage().data_ptr() for p in model.parameters()}
    state |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in state:
            storages[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())


def assert_sums(table: memprof.LayerTable) -> None:
    t = table.totals
    assert sum(r.params for r in table.rows) == t.params
    assert sum(r.param_bytes for r in table.rows) == t.param_bytes
    assert sum(r.grad_bytes for r in table.rows) == t.grad_bytes
    assert sum(r.activations for r in table.rows) == t.activations
    assert sum(r.saved_bytes for r in table.rows) == t.saved_bytes
    df = table.to_dataframe()
    for col, total in (("params", t.params), ("activations", t.activations),
                       ("saved_bytes", t.saved_bytes), ("grad_bytes", t.grad_bytes)):
        assert int(df[col].sum()) == total, col
    data = json.loads(table.to_json())
    for key in ("params", "activations", "saved_bytes", "grad_bytes"):
        assert sum(r[key] for r in data["rows"]) == data["totals"][key], key


# -- the deck's figures -----------------------------------------------------------------------


def test_vgg19_totals_match_the_deck() -> None:
    table = memprof.layer_table("vgg19")
    t = table.totals
    assert t.params == 20_565_834
    assert memprof.format_bytes(t.param_bytes, "MiB") == "78.45 MiB"
    assert t.activations == 638_474
    assert memprof.format_bytes(t.activation_bytes, "MiB") == "311.75 MiB"
    text = str(table)
    assert "20,565,834" in text and "638,474" in text and "311.75 MiB" in text and "78.45 MiB" in text
    assert "MiB = 2^20 bytes (the deck's 'MB' are MiB)" in text
    assert_sums(table)
    # The deck's rows: no ReLU rows (folded), 16 conv, 16 BN(+ReLU), 5 pools, 3 linear.
    assert len(table.rows) == 40
    assert not any(r.layer == "ReLU" for r in table.rows)


def test_vgg19_seed_differences_are_named() -> None:
    comp = memprof.layer_table("vgg19").seed
    assert comp is not None
    causes = {(d.seed_row, d.name, d.column): d.cause for d in comp.differences}
    assert causes[(20, "features.27", "input_shape")] == "typo"
    omitted = [d for d in comp.differences if d.cause == "omitted row"]
    assert [d.name for d in omitted] == ["features.49", "features.50+features.51"]
    assert all("totals include it" in d.detail for d in omitted)
    # one conv + one BN: the deck's totals exceed the sum of its rows by exactly these two rows
    assert comp.params - comp.rows_params == 2_359_808 + 1_024
    assert comp.activations - comp.rows_activations == 2_048 + 2_048
    # every other difference is an empty kernel/stride cell of a conv from stage 2 on
    rest = [d for d in comp.differences if d.cause not in ("typo", "omitted row")]
    assert {d.cause for d in rest} == {"empty cell"}
    assert {d.column for d in rest} == {"kernel", "stride"}
    assert len(rest) == 2 * 13


def test_revvgg_seed_differences_are_named() -> None:
    table = memprof.layer_table("revvgg")
    comp = table.seed
    assert comp is not None
    by_cause: dict[str, list] = {}
    for d in comp.differences:
        by_cause.setdefault(d.cause, []).append(d)
    slip = by_cause["arithmetic slip"]
    assert [(d.seed_row, d.column, d.seed, d.memprof) for d in slip] == [(4, "activations", "16,384", "8,192")]
    conv = by_cause["inconsistent convention"]
    assert [(d.seed_row, d.column) for d in conv] == [(11, "activations")]
    # The main stream's BatchNorms (NOTE [ Normalisation in the main stream ]): one more in each
    # RevBlock (rows 3, 5, 7, 9) and norm5 (no deck row); pool5 averages (10); the linear
    # block's couplings (11).
    design = by_cause["different design"]
    assert sorted((d.seed_row or 0, d.column) for d in design) == [
        (0, "row"), (3, "params"), (5, "params"), (7, "params"), (9, "params"), (10, "layer"), (11, "params")]
    assert [(d.seed, d.memprof) for d in design if d.column == "layer"] == [("Maxpool2d", "AvgPool2d")]
    assert all("NOTE [ Normalisation in the main stream ]" in d.detail for d in design if d.seed_row != 11)
    assert [d.column for d in by_cause["rounding slip"]] == ["parameter memory"]
    assert set(by_cause) <= {"arithmetic slip", "inconsistent convention", "different design",
                             "rounding slip", "empty cell"}
    assert comp.corrected_activations == 97_290  # the deck's rows with the slip fixed: 47.50 MiB
    assert comp.rows_activations == comp.table.activations == 105_482
    # RevBlocks count 0 by the convention, but autograd does save something for them
    blocks = [r for r in table.rows if r.layer == "RevBlock"]
    assert len(blocks) == 4 and all(r.activations == 0 and r.saved_bytes > 0 for r in blocks)
    assert_sums(table)


@pytest.mark.parametrize("name", list_models())
def test_rows_add_up_to_totals(name: str) -> None:
    for all_rows in (False, True):
        table = memprof.layer_table(name, batch_size=2, all_rows=all_rows)
        assert_sums(table)
        assert table.totals.params == sum(p.numel() for p in get_model(name).parameters())


# vit included: the fake pass dispatches scaled_dot_product_attention as the CPU does (its flash
# kernel, which saves a logsumexp, not the math path's attention probabilities; see
# memprof.recording.estimate), so its saved bytes equal a real CPU forward's too.
@pytest.mark.parametrize("name", list_models())
def test_meta_pass_equals_a_real_pass(name: str) -> None:
    """The default meta-device pass is exact: its total equals a real CPU forward's, measured
    independently (data pointers); per-row equality with device="cpu" is tested on small models."""
    meta = memprof.layer_table(name, batch_size=2)
    torch.manual_seed(0)
    assert meta.totals.saved_bytes == measure_saved(get_model(name), torch.randn(2, 3, 32, 32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list_models())
def test_cuda_pass_equals_an_independent_measure(name: str) -> None:
    table = memprof.layer_table(name, batch_size=2, device="cuda")
    assert_sums(table)
    torch.manual_seed(0)
    model = get_model(name).cuda()
    assert table.totals.saved_bytes == measure_saved(model, torch.randn(2, 3, 32, 32, device="cuda"))


# -- any nn.Module ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, shape",
    [(tiny_net, (3, 8, 8)), (Functional, (3, 8, 8)), (TupleOut, (5,)), (DictOut, (5,))],
    ids=["tiny", "functional", "tuple", "dict"],
)
def test_custom_modules(make, shape) -> None:
    model = make()
    table = memprof.layer_table(model, shape, batch_size=4, all_rows=True)
    assert_sums(table)
    assert table.totals.params == sum(p.numel() for p in model.parameters())
    assert table.totals.saved_bytes == measure_saved(model, torch.randn(4, *shape))
    real = memprof.layer_table(model, shape, batch_size=4, all_rows=True, device="cpu")
    assert [r.saved_bytes for r in real.rows] == [r.saved_bytes for r in table.rows]


def test_functional_ops_called_twice_and_own_ops() -> None:
    table = memprof.layer_table(Functional(), (3, 8, 8), batch_size=4)
    names = [r.name for r in table.rows]
    assert "act" in names and "act#2" in names  # one row per call
    own = [r for r in table.rows if r.name == "(model) (own ops)"]
    assert len(own) == 1 and own[0].params == 6 and own[0].saved_bytes > 0
    assert "flatten (Flatten)" in table.hidden


def test_tuple_and_dict_outputs_show_every_shape() -> None:
    table = memprof.layer_table(DictOut(), (5,), batch_size=4, depth=1)
    (row, *_) = table.rows
    assert row.name == "body" and row.output_shape == ((4,), (3,))
    data = json.loads(table.to_json())
    assert data["rows"][0]["output_shape"] == [[4], [3]]


def test_depth_controls_granularity() -> None:
    whole = memprof.layer_table("vgg19", batch_size=2, depth=0)
    assert len(whole.rows) == 1 and whole.rows[0].name == "(model)"
    top = memprof.layer_table("vgg19", batch_size=2, depth=1)
    assert [r.name for r in top.rows] == ["features", "classifier"]
    leaves = memprof.layer_table("vgg19", batch_size=2)
    for t in (whole, top):
        assert t.totals == leaves.totals
        assert t.seed is None and any("No seed comparison" in n for n in t.notes())
    # The convention is structural (a reversible block counts 0 at any depth): same totals.
    rev = [memprof.layer_table("revvgg", batch_size=2, depth=d).totals for d in (None, 0, 2, 99)]
    assert all(t == rev[0] for t in rev)


def test_dtype_halves_the_float_bytes() -> None:
    f32 = memprof.layer_table("vgg19", batch_size=2)
    idx = sum(r.saved_bytes for r in f32.rows if r.layer == "MaxPool2d")  # int64 indices only
    bn_channels = sum(m.num_features for m in get_model("vgg19").modules() if isinstance(m, nn.BatchNorm2d))
    for dtype in ("bfloat16", "float16"):
        half = memprof.layer_table("vgg19", batch_size=2, dtype=dtype)
        assert half.dtype == dtype and half.totals.params == f32.totals.params
        assert 2 * half.totals.param_bytes == f32.totals.param_bytes
        assert 2 * half.totals.activation_bytes == f32.totals.activation_bytes
        # Floats halve (BatchNorm's saved mean and inverse std too: the meta pass takes the CPU's
        # kernels, NOTE [ The meta pass runs on fake CPU tensors ]); max-pool indices stay int64.
        assert 2 * half.totals.saved_bytes == f32.totals.saved_bytes + idx
        assert bn_channels > 0
        # Per row, a meta pass and a CPU pass of a small model agree exactly.
        model = tiny_net()
        meta = memprof.layer_table(model, (3, 8, 8), batch_size=4, dtype=dtype, all_rows=True)
        cpu = memprof.layer_table(model, (3, 8, 8), batch_size=4, dtype=dtype, all_rows=True, device="cpu")
        assert [m.saved_bytes for m in meta.rows] == [c.saved_bytes for c in cpu.rows]


def test_profiling_leaves_the_model_unchanged() -> None:
    model = tiny_net()
    model.eval()
    model.features[1].train()  # mixed modes must come back as they were
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model.eval()(x)
    model.features[1].train()
    rng = torch.get_rng_state()
    for device in ("meta", "cpu"):
        memprof.layer_table(model, (3, 8, 8), batch_size=4, device=device)
    assert torch.equal(rng, torch.get_rng_state())
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)


def test_forward_failure_names_the_layers_and_removes_hooks() -> None:
    model = tiny_net()
    with pytest.raises(UsageError) as info:
        memprof.layer_table(model, (3, 6, 6), batch_size=2)
    msg = str(info.value)
    assert "input shape (3,6,6) does not fit TinyNet" in msg
    assert "classifier.1 (Linear)" in msg and "features.3" in msg
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.training


def test_json_keys() -> None:
    data = json.loads(memprof.layer_table("revvgg", batch_size=2).to_json())
    assert {"model", "batch_size", "dtype", "rows", "totals", "seed"} <= set(data)
    assert data["model"] == "revvgg" and data["batch_size"] == 2 and data["dtype"] == "float32"
    assert {"name", "layer", "input_shape", "output_shape", "params", "activations", "saved_bytes",
            "grad_bytes"} <= set(data["rows"][0])
    assert {"params", "param_bytes", "activations", "activation_bytes", "saved_bytes"} <= set(data["totals"])
    assert {"params", "activations", "param_mib", "activation_mib", "rows"} <= set(data["seed"])
    assert data["seed"]["params"] == 20_824_330 and data["seed"]["activation_mib"] == 51.50
    assert json.loads(memprof.layer_table("irevvgg", batch_size=2).to_json())["seed"] is None


# -- CLI, golden files, reports ---------------------------------------------------------------


@pytest.mark.parametrize("fmt, ext", [("text", "txt"), ("markdown", "md"), ("csv", "csv"), ("json", "json")])
def test_golden_tiny(fmt: str, ext: str, capsys, golden) -> None:
    assert main(["table", TINY, "--input-shape", "3,8,8", "--batch-size", "4", "--format", fmt]) == 0
    golden(f"table_tiny.{ext}", capsys.readouterr().out)


def test_golden_revvgg_text(capsys, golden) -> None:
    assert main(["table", "revvgg"]) == 0
    golden("table_revvgg.txt", capsys.readouterr().out)


def test_out_writes_the_same_text(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "t.json"
    assert main(["table", TINY, "--input-shape", "3,8,8", "--batch-size", "4", "--format", "json",
                 "--out", str(out)]) == 0
    assert main(["table", TINY, "--input-shape", "3,8,8", "--batch-size", "4", "--format", "json"]) == 0
    assert out.read_text() == capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["t.json"]  # no temporary file left


def test_reports_are_current(tmp_path: Path) -> None:
    written = write_table_reports(tmp_path)
    assert sorted(p.name for p in written) == sorted(
        f"{m}.{ext}" for m in ("vgg19", "revvgg", "irevvgg", "vit", "revvit") for ext in ("md", "csv"))
    for path in written:
        text = path.read_text()
        if path.suffix == ".md":
            assert text.startswith("Generated by `memprof report tables`")
        else:  # plain CSV, its provenance in the .md beside it
            assert text.startswith("name,"), text.splitlines()[0]
        committed = REPO / "reports" / path.name
        assert committed.exists(), f"{committed} is missing: run `memprof report tables`"
        assert committed.read_text() == text, f"{committed} is stale: run `memprof report tables`"


def test_shipped_cache_is_current(capsys) -> None:
    """memprof/shipped_cache/ holds an entry for each shipped command, hashing the memprof modules as they
    are now; where the packages are the versions it was computed with, its output is the command's now."""
    from memprof import cache
    from memprof.cli import build_parser
    from memprof.cli._common import model_options
    from memprof.cli.table import _resolve_builtin
    from memprof.reports.tables import SHIPPED_COMMANDS

    stale = "run `memprof report tables`"
    assert len(SHIPPED_COMMANDS) == 20
    shipped = {path: cache.read_entry(path) for path in cache.SHIPPED_DIR.rglob("*.json")}
    assert len(shipped) == len(SHIPPED_COMMANDS), f"{len(shipped)} shipped entries for {len(SHIPPED_COMMANDS)} commands: {stale}"
    elsewhere = set()
    for argv in SHIPPED_COMMANDS:
        args = build_parser(list(argv)).parse_args(list(argv))
        key = cache.cache_key("table", _resolve_builtin(args, args.format, model_options(args)))
        found = [(p, e) for p, e in shipped.items() if isinstance(e, dict) and e.get("key", {}).get("arguments")
                 == key["arguments"] and e["key"].get("verb") == "table"]
        assert len(found) == 1, f"no shipped entry for `memprof {' '.join(argv)}`: {stale}"
        path, entry = found[0]
        assert path.relative_to(cache.SHIPPED_DIR).as_posix() == cache.entry_name(entry["key"]), path
        assert cache._valid(entry, entry["key"], {}) is not None, f"{path.name}: its modules changed since: {stale}"
        if entry["key"] != key:  # computed with other versions: valid, but unused here
            elsewhere.add(json.dumps({k: v for k, v in entry["key"].items() if k != "arguments"}, sort_keys=True))
            continue
        assert main([*argv, "--no-cache"]) == 0
        assert entry["output"] == capsys.readouterr().out, f"{path.name} is stale: {stale}"
    if elsewhere:
        pytest.skip(f"the shipped entries were computed with {sorted(elsewhere)}, not the versions here: "
                    "their modules are current, their outputs were not compared")


def test_report_equals_the_command_it_names(capsys) -> None:
    text = (REPO / "reports" / "revvgg.md").read_text()
    assert "`memprof table revvgg --format markdown --seed-table` prints the same tables." in text
    assert main(["table", "revvgg", "--format", "markdown", "--seed-table"]) == 0
    assert text.endswith(capsys.readouterr().out)


def test_data_dependent_forward_on_meta_says_to_use_cpu() -> None:
    class ItemNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * float(x.sum().item() > 0)

    with pytest.raises(UsageError, match="device='cpu'"):
        memprof.layer_table(ItemNet(), (4,), batch_size=2)
    assert memprof.layer_table(ItemNet(), (4,), batch_size=2, device="cpu").totals.params == 20


@pytest.mark.parametrize(
    "argv, bad",
    [
        (["table", "nosuchnet"], "'nosuchnet'"),
        (["table", "vgg19", "--batch-size", "0"], "got 0"),
        (["table", "vgg19", "--batch-size", "many"], "'many'"),
        (["table", "vgg19", "--format", "xml"], "'xml'"),
        (["table", "vgg19", "--dtype", "int8"], "'int8'"),
        (["table", "vgg19", "--device", "tpu"], "'tpu'"),
        (["table", "vgg19", "--depth", "-1"], "-1"),
        (["table", "vgg19", "--input-shape", "3,x,32"], "'3,x,32'"),
        (["table", "vgg19", "--input-shape", "3,16,16"], "(3,16,16)"),
        (["table", TINY], "input shape is required"),
        (["table", "tests.test_table:nothing_here", "--input-shape", "3,8,8"], "nothing_here"),
        (["table", "tests.test_table:TinyNet.forward", "--input-shape", "3,8,8"], "factory"),
        (["table", "torch:float32", "--input-shape", "3,8,8"], "not an nn.Module"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, bad, capsys) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memprof table: error:"), captured.err
    assert bad in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
