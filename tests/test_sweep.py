"""`memprof sweep`: batch-size parsing, argument checks, the result's invariants, out-of-memory rows,
the CLI (files written whole or not at all), and the staleness of reports/sweep.csv."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from memprof.aggregation.sweep import FIGURES, STATUS_OK, STATUS_OOM, STATUS_SKIPPED  # noqa: E402
from memprof.api import sweep as sweep_mod  # noqa: E402
from memprof.api.sweep import (  # noqa: E402
    DEFAULT_BATCH_SIZES,
    DEFAULT_MODELS,
    check_sweep_args,
    is_out_of_memory,
    sweep,
)
from memprof.api.table import layer_table  # noqa: E402
from memprof.cli import main  # noqa: E402
from memprof.errors import UsageError  # noqa: E402
from memprof.rendering.sweep import SweepResult  # noqa: E402
from memprof.validation import check_output_dir, parse_batch_sizes  # noqa: E402

REPORTS = Path(__file__).resolve().parent.parent / "reports"


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1", [1]),
        ("1,8,64", [1, 8, 64]),
        (" 4 , 2 ", [4, 2]),
        ("1,2,4,...,1024", [2**k for k in range(11)]),
        ("1,2,...,8", [1, 2, 4, 8]),  # geometric first
        ("1,2,...,10", list(range(1, 11))),  # geometric would miss 10
        ("16,32,48,...,128", list(range(16, 129, 16))),
        ([1, 8], [1, 8]),
        (32, [32]),
    ],
)
def test_parse_batch_sizes(text, expected):
    assert parse_batch_sizes(text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "1,,2", "1,x", "0", "-1", "1.5", "1,2,...", "...,4", "1,...,4", "1,3,...,10",
             "1,2,...,4,...,8", "4,4", "1,2,4,...,1024,2048", "100000000"],
)
def test_parse_batch_sizes_rejects(text):
    with pytest.raises(UsageError) as err:
        parse_batch_sizes(text)
    assert "batch size" in str(err.value)


def test_check_sweep_args_names_the_bad_value():
    with pytest.raises(UsageError, match="unknown model 'resnet'.*allowed: irevvgg, revvgg, revvit, vgg19, vit"):
        check_sweep_args("vgg19,resnet")
    with pytest.raises(UsageError, match="comma-separated"):
        check_sweep_args("")
    with pytest.raises(UsageError, match="listed twice"):
        check_sweep_args("vgg19,vgg19")
    with pytest.raises(UsageError, match="unknown mode"):
        check_sweep_args(mode="guess")
    with pytest.raises(UsageError, match="optimizer"):
        check_sweep_args(optimizer="lbfgs")
    args = check_sweep_args()
    assert args.models == list(DEFAULT_MODELS) and args.batch_sizes == list(DEFAULT_BATCH_SIZES)


def test_check_output_dir(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        check_output_dir(a_file)
    with pytest.raises(UsageError, match="cannot be written"):
        check_output_dir(a_file / "sub")
    new = tmp_path / "a" / "b"
    assert check_output_dir(new) == new and new.is_dir() and not list(new.iterdir())


def test_is_out_of_memory():
    import torch

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


# -- a small real sweep ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> SweepResult:
    """vgg19 and revvgg at batch 1 and 2, the default mode and settings (estimated, cpu, float32, sgd)."""
    return sweep("vgg19,revvgg", "1,2", progress=False)


def test_sweep_rows_and_savings(small):
    df = small.to_dataframe()
    assert list(zip(df["model"], df["batch_size"])) == [("vgg19", 1), ("vgg19", 2), ("revvgg", 1), ("revvgg", 2)]
    assert (df["status"] == STATUS_OK).all()
    for f in FIGURES:
        assert df[f].notna().all() and (df[f] > 0).all()
        assert df[df["model"] == "vgg19"][f"{f}_saving_pct"].isna().all()  # the reference has no saving
    for b in (1, 2):
        ref = df[(df["model"] == "vgg19") & (df["batch_size"] == b)].iloc[0]
        row = df[(df["model"] == "revvgg") & (df["batch_size"] == b)].iloc[0]
        for f in FIGURES:
            assert row[f"{f}_saving_pct"] == pytest.approx(100 * (1 - row[f] / ref[f]), abs=0.006)


def test_sweep_figures_match_their_sources(small):
    df = small.to_dataframe()
    for name in ("vgg19", "revvgg"):
        t1 = layer_table(name, batch_size=1)
        rows = df[df["model"] == name].set_index("batch_size")
        assert rows.loc[1, "seed_activation_bytes"] == t1.totals.activation_bytes
        assert rows.loc[1, "saved_bytes"] == t1.totals.saved_bytes
        # the deck's convention is linear in the batch size
        assert rows.loc[2, "seed_activation_bytes"] == 2 * rows.loc[1, "seed_activation_bytes"]
        for b in (1, 2):
            # every saved tensor is live at the end of the forward: the activation peak is at least that
            assert rows.loc[b, "activation_peak_bytes"] >= rows.loc[b, "saved_bytes"]
            assert rows.loc[b, "peak_bytes"] > rows.loc[b, "activation_peak_bytes"]


def test_reversible_saves_activation_memory(small):
    df = small.to_dataframe()
    rev = df[df["model"] == "revvgg"]
    # a claim that can fail: Rev-VGG's activation peak is at most 0.6 of VGG-19's at the same batch
    assert (rev["activation_peak_bytes_saving_pct"] > 40).all()
    assert (rev["seed_activation_bytes_saving_pct"] > 80).all()  # the deck claims 83.4% at batch 128


def test_sweep_renderings(small, tmp_path):
    csv = small.to_csv(comment="hello")
    back = pd.read_csv(io.StringIO(csv), comment="#")
    assert list(back["model"]) == ["vgg19", "vgg19", "revvgg", "revvgg"]
    assert list(back["peak_bytes"]) == [int(v) for v in small.to_dataframe()["peak_bytes"]]
    text = small.to_text()
    assert "activation peak (estimated)" in text and "MiB" in text and "saving: 1 - figure / vgg19" in text
    assert small.render("markdown").startswith("### memprof sweep")
    assert '"reference": "vgg19"' in small.render("json")
    with pytest.raises(UsageError):
        small.render("yaml")
    png = tmp_path / "s.png"
    small.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- measured mode: out of memory is a row -------------------------------------------------------------


def test_out_of_memory_becomes_a_row_and_the_sweep_goes_on(monkeypatch):
    import torch

    calls = []

    def fake_row(name, model, b, args):
        calls.append((name, b))
        if name == "vgg19" and b >= 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return {f: 1000 * b for f in FIGURES}

    monkeypatch.setattr(sweep_mod, "_measure_row", fake_row)
    res = sweep("vgg19,revvgg", "2,4,8", mode="measured", progress=False)
    df = res.to_dataframe()
    assert list(df["status"]) == [STATUS_OK, "out of memory at batch 4: needed 8.00 GiB more", STATUS_SKIPPED,
                                  STATUS_OK, STATUS_OK, STATUS_OK]
    assert df["status"][1].startswith(STATUS_OOM)
    assert calls == [("vgg19", 2), ("vgg19", 4), ("revvgg", 2), ("revvgg", 4), ("revvgg", 8)]
    assert df.loc[1, "peak_bytes"] is pd.NA and pd.isna(df.loc[4, "peak_bytes_saving_pct"])
    assert "out of memory" in res.to_text()
    res.plot()  # rows without figures are left out of the plot

    # in estimate mode (or for another error) nothing is swallowed
    monkeypatch.setattr(sweep_mod, "_measure_row", lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError):
        sweep("vgg19", "1", mode="estimated", progress=False)


# -- any model: a user's module, token ids, dict inputs ---------------------------------------------


class _DictNet(nn.Module):
    """Takes a dict: float features and an integer mask, as many user models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 5))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.body(features * mask.unsqueeze(-1).float()).mean(1)


def _lstm_inputs():
    from memprof.recording.user_step import InputSpec

    return [InputSpec("ids", torch.int64, (16,), 0, 100)]


def _tensor_owned(df):
    """The figures no kernel scratch enters: the table's two and the step's activation peak."""
    return df[["model", "batch_size", "seed_activation_bytes", "saved_bytes", "activation_peak_bytes"]]


@pytest.mark.parametrize("case", ["lstm", "dict"])
def test_sweep_any_model_estimate_equals_measurement(case):
    from tests.helpers import LSTMLM

    if case == "lstm":  # an LSTM language model on token ids (InputSpecs)
        kw = {"inputs": _lstm_inputs(), "optimizer": "adamw"}
        models = {"lstm": LSTMLM()}
    else:  # a dict of example tensors, float and integer; their batch dimension follows each size
        kw = {"inputs": {"features": torch.randn(3, 7, 24), "mask": torch.ones(3, 7, dtype=torch.long)}}
        models = _DictNet()
    est = sweep(models, "2,6", progress=False, **kw)
    meas = sweep(models, "2,6", mode="measured", progress=False, **kw)
    a, b = est.to_dataframe(), meas.to_dataframe()
    assert (a["status"] == STATUS_OK).all() and (b["status"] == STATUS_OK).all()
    assert list(a["model"]) == [est.models[0]] * 2 and est.models == meas.models
    pd.testing.assert_frame_equal(_tensor_owned(a), _tensor_owned(b))
    assert (a["saved_bytes"] > 0).all() and (a["peak_bytes"] >= a["activation_peak_bytes"]).all()
    assert a.loc[1, "activation_peak_bytes"] > a.loc[0, "activation_peak_bytes"]  # the batch dimension scaled
    # the step's inputs are the ones given: the same rows as profile_step with them
    from memprof.api.step import profile_step

    module = models["lstm"] if isinstance(models, dict) else models
    prof = profile_step(module, 6, estimate=True, **kw)
    assert a.loc[1, "peak_bytes"] == prof.peak_bytes


def test_sweep_user_model_against_a_registered_one():
    res = sweep({"mine": nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), "vgg": "vgg19"}, "1",
                input_shape=(3, 32, 32), progress=False)
    df = res.to_dataframe()
    assert list(df["model"]) == ["mine", "vgg"] and res.reference == "mine"
    assert df.loc[1, "peak_bytes_saving_pct"] < 0  # VGG-19 needs more than one linear layer


def test_sweep_user_model_bad_arguments():
    with pytest.raises(UsageError, match="not registered: give its input shape"):
        check_sweep_args(_DictNet())
    with pytest.raises(UsageError, match="listed twice"):
        check_sweep_args([_DictNet(), _DictNet()], input_shape=(3,))
    with pytest.raises(UsageError, match="unknown model 'resnet'"):
        check_sweep_args({"a": "resnet"})
    with pytest.raises(UsageError, match="inputs must be"):
        check_sweep_args(_DictNet(), inputs=3)


def test_out_of_memory_rows_of_a_user_model_are_kept_whole(monkeypatch):
    def fake_row(name, model, b, args):
        assert isinstance(model, _DictNet)
        if b >= 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 8589934592 bytes")
        return {f: 1000 * b for f in FIGURES}

    monkeypatch.setattr(sweep_mod, "_measure_row", fake_row)
    df = sweep(_DictNet(), "2,4,8", mode="measured", input_shape=(7, 24), progress=False).to_dataframe()
    assert df["status"][0] == STATUS_OK and df["status"][1].startswith(STATUS_OOM) and df["status"][2] == STATUS_SKIPPED
    assert int(df.loc[0, "peak_bytes"]) == 2000 and df.loc[1, "peak_bytes"] is pd.NA and df.loc[2, "peak_bytes"] is pd.NA


def test_cli_sweep_with_a_factory_and_input_specs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", "--models", "tests.helpers:LSTMLM", "--input", "ids:int64:16:100",
                 "--batch-sizes", "2,4", "--optimizer", "adamw:lr=1e-4", "--format", "json", "--out", str(out)]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["models"] == ["tests.helpers:LSTMLM"] and doc["optimizer"] == "adamw"
    assert [r["status"] for r in doc["rows"]] == [STATUS_OK, STATUS_OK]
    assert "--input ids:int64:16:100" in (out / "sweep.md").read_text()


# -- CLI -----------------------------------------------------------------------------------------------


def test_cli_sweep_writes_csv_and_png(tmp_path, capsys, monkeypatch, small):
    # the figures are the library's (tested above on real runs); here the CLI's wiring and files
    rows = {(r["model"], r["batch_size"]): r for r in small.rows}
    monkeypatch.setattr(sweep_mod, "_measure_row", lambda name, model, b, args: {f: rows[name, b][f] for f in FIGURES})
    out = tmp_path / "out"
    assert main(["sweep", "--models", "vgg19", "--batch-sizes", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "memprof sweep: vgg19 at batch 1" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.md", "sweep.png"]
    csv = (out / "sweep.csv").read_text()
    assert csv.startswith("model,batch_size,status,")  # plain CSV: the provenance is in sweep.md
    assert (out / "sweep.md").read_text().startswith("Generated by `memprof sweep --models vgg19 --batch-sizes 1 --estimate")
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-sizes", ""], "empty"),
        (["--batch-sizes", "1,two"], "'two'"),
        (["--batch-sizes", "1,3,...,10"], "constant ratio"),
        (["--models", "vgg19,alexnet"], "unknown model 'alexnet'"),
        (["--format", "yaml"], "unknown format"),
        (["--device", "tpu"], "device"),
        (["--models", "no_such_module_xyz:make"], "cannot load model"),
        (["--models", "tests.helpers:LSTMLM"], "not registered: give its input shape"),
        (["--input", "ids:int64"], "does not parse"),
    ],
)
def test_cli_sweep_bad_input(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["sweep", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memprof sweep: error:") and message in err
    assert not out.exists()  # checked before any work: nothing created, nothing half-written


def test_cli_sweep_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["sweep", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be written" in err


# -- the report is not stale ----------------------------------------------------------------------------


def test_report_sweep_csv_is_current(small):
    path = REPORTS / "sweep.csv"
    assert path.exists(), "reports/sweep.csv is missing: run `memprof report sweep`"
    assert (REPORTS / "sweep.md").read_text().startswith("Generated by `memprof report sweep`")
    rep = pd.read_csv(path)
    assert list(dict.fromkeys(rep["model"])) == list(DEFAULT_MODELS), "stale: run `memprof report sweep`"
    assert sorted(set(rep["batch_size"])) == sorted(DEFAULT_BATCH_SIZES), "stale: run `memprof report sweep`"
    # the default settings at batch 1 are deterministic: the report's rows must be today's figures
    now = small.to_dataframe()
    for name in ("vgg19", "revvgg"):
        a = rep[(rep["model"] == name) & (rep["batch_size"] == 1)].iloc[0]
        b = now[(now["model"] == name) & (now["batch_size"] == 1)].iloc[0]
        for f in FIGURES:
            assert int(a[f]) == int(b[f]), f"stale reports/sweep.csv ({name}, {f}): run `memprof report sweep`"
    assert (REPORTS / "sweep.png").exists()


def test_reports_readme_links_every_report():
    from memprof.reports.index import REPORT_DESCRIPTIONS, render_reports_index

    readme = REPORTS / "README.md"
    assert readme.exists(), "reports/README.md is missing: run `memprof report readme`"
    files = sorted(p.name for p in REPORTS.iterdir() if p.is_file() and not p.name.startswith("."))
    assert readme.read_text() == render_reports_index(files), "stale reports/README.md: run `memprof report readme`"
    text = readme.read_text()
    for name in files:
        if name != "README.md":
            assert f"]({name})" in text
    for name in ("vgg19.md", "revvgg.md", "irevvgg.md", "sweep.csv", "sweep.png", "compare.md", "compare.png"):
        assert name in REPORT_DESCRIPTIONS


def test_sweep_under_autocast_says_where_the_table_comes_from():
    from tests.helpers import LSTMLM

    result = sweep({"lstm": LSTMLM()}, "2", inputs=_lstm_inputs(), autocast="bfloat16", progress=False)
    text = result.render("text")
    assert "run under autocast (bfloat16)" in text and "without autocast" in text
    plain = sweep({"lstm": LSTMLM()}, "2", inputs=_lstm_inputs(), progress=False).render("text")
    assert "autocast" not in plain
