"""`memprof compare`: checkpointing wrappers are equivalent to plain autograd, argument checks,
memory claims that can fail, the honest findings, timing mechanics, the CLI, and the staleness
of reports/compare.md."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from memprof.aggregation.compare import STRATEGIES, default_strategies, list_strategies  # noqa: E402
from memprof.api.compare import (  # noqa: E402
    build_strategy,
    check_compare_args,
    compare_strategies,
    time_strategies,
)
from memprof.cli import main  # noqa: E402
from memprof.errors import UsageError  # noqa: E402
from memprof.models import get_model  # noqa: E402
from memprof.models.strategies import (  # noqa: E402
    CheckpointedSequential,
    checkpoint_sqrt,
    checkpoint_stages,
    flatten_layers,
    group_units,
)
from memprof.rendering.compare import StrategyComparison  # noqa: E402
from memprof.reports.compare import REPORT_BATCH_SIZE  # noqa: E402
from memprof.units import format_bytes  # noqa: E402

REPORTS = Path(__file__).resolve().parent.parent / "reports"


# -- the checkpointing wrappers ------------------------------------------------------------------------


def test_units_and_segments_of_vgg19():
    model = get_model("vgg19")
    units = group_units(flatten_layers(model))
    assert len(units) == 25  # 16 conv+BN+ReLU, 5 pools, flatten, 3 linear units
    stages, sqrt = checkpoint_stages(model), checkpoint_sqrt(model)
    assert len(stages.segments) == 6 and len(sqrt.segments) == 5
    for wrapper in (stages, sqrt):
        # the same Parameter objects: same count, nothing copied
        assert {id(p) for p in wrapper.parameters()} == {id(p) for p in model.parameters()}
        for seg in wrapper.segments:  # NOTE [ Units: a layer and the in-place activation that overwrites it ]
            assert not isinstance(seg[0], nn.ReLU)
    assert all(isinstance(s[-1], nn.MaxPool2d) for s in stages.segments[:5])
    with pytest.raises(TypeError, match="cannot cut"):
        flatten_layers(nn.Conv2d(3, 3, 3))


@pytest.mark.parametrize("wrap", [checkpoint_stages, checkpoint_sqrt])
def test_checkpointing_gives_plain_outputs_and_gradients(wrap):
    # a small VGG (same class, same layer builder) keeps this fast; VGG-19's cut is tested above
    from memprof.models.vgg import VGG

    torch.manual_seed(0)
    plain = VGG([8, "M", 16, 16, "M", 16, "M"], num_classes=10)  # input (3, 8, 8) -> (16, 1, 1)
    twin = copy.deepcopy(plain)
    wrapped = wrap(twin)
    assert len(wrapped.segments) >= 3
    x = torch.randn(4, 3, 8, 8)
    y = torch.tensor([3, 7, 1, 0])
    losses = []
    for m in (plain, wrapped):
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (n, p), q in zip(plain.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_checkpointed_sequential_saves_less():
    from tests.helpers import saved_bytes

    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(64, 64), nn.Tanh()) for _ in range(4)]
    seq = nn.Sequential(*layers)
    ck = CheckpointedSequential([nn.Sequential(layers[0], layers[1]), nn.Sequential(layers[2], layers[3])])
    x = torch.randn(8, 64, requires_grad=True)
    assert saved_bytes(lambda: ck(x), list(seq.parameters())) < saved_bytes(lambda: seq(x), list(seq.parameters()))


# -- argument checks -----------------------------------------------------------------------------------


def test_check_compare_args():
    assert default_strategies() == ["plain", "checkpoint-stages", "checkpoint-sqrt", "reversible", "invertible"]
    assert "offload" in list_strategies() and STRATEGIES["offload"].needs_cuda
    assert check_compare_args("reversible,checkpoint-sqrt").strategies == ["plain", "reversible", "checkpoint-sqrt"]
    with pytest.raises(UsageError, match="unknown strategy 'remat'.*allowed: plain, checkpoint-stages"):
        check_compare_args("plain,remat")
    with pytest.raises(UsageError, match="'offload' needs --measure on a CUDA device"):
        check_compare_args("offload")
    with pytest.raises(UsageError, match="listed twice"):
        check_compare_args("reversible,reversible")
    with pytest.raises(UsageError, match="repeats"):
        check_compare_args(repeats=0)
    with pytest.raises(UsageError, match="batch size"):
        check_compare_args(batch_size="many")
    with pytest.raises(UsageError, match="unknown mode"):
        check_compare_args(mode="fast")
    with pytest.raises(UsageError, match="unknown strategy"):
        build_strategy("nope")


# -- memory claims -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untimed() -> StrategyComparison:
    return compare_strategies("checkpoint-sqrt,reversible", batch_size=REPORT_BATCH_SIZE, timing=False)


def test_memory_claims(untimed):
    rows = {r["strategy"]: r for r in untimed.rows}
    assert list(rows) == ["plain", "checkpoint-sqrt", "reversible"]
    plain, ck, rev = rows["plain"], rows["checkpoint-sqrt"], rows["reversible"]
    assert ck["params"] == plain["params"] == 20_565_834
    assert rev["params"] == 20_828_298
    # claims that can fail: each saves at least a quarter of plain's activation peak
    assert ck["activation_peak_bytes"] < 0.75 * plain["activation_peak_bytes"]
    assert rev["activation_peak_bytes"] < 0.75 * plain["activation_peak_bytes"]
    for r in rows.values():
        assert r["activation_ratio"] == pytest.approx(r["activation_peak_bytes"] / plain["activation_peak_bytes"], abs=1e-4)
        assert r["peak_bytes"] > r["activation_peak_bytes"]
        assert r["time_ratio"] is None
    with pytest.raises(ValueError, match="without timing"):
        untimed.plot()


def test_findings_say_where_checkpointing_wins():
    def row(s, params, act, peak, t):
        return {"strategy": s, "model": "", "params": params, "activation_peak_bytes": act, "peak_bytes": peak,
                "activation_ratio": None, "peak_ratio": None, "time_ratio": t, "time_ratio_min": t,
                "time_ratio_max": t, "step_time_s": t, "description": ""}

    mib = 1 << 20
    res = StrategyComparison(
        [row("plain", 100, 50 * mib, 90 * mib, 1.0), row("checkpoint-sqrt", 100, 20 * mib, 60 * mib, 1.3),
         row("reversible", 120, 10 * mib, 70 * mib, 1.8)],
        batch_size=8, mode="estimated", device="cpu", dtype="float32", optimizer="sgd", repeats=3)
    f = res.findings()
    assert ("checkpoint-sqrt beats reversible on step peak (60.00 MiB vs 70.00 MiB), step time (1.30x plain vs "
            "1.80x plain), parameters (100 vs 120).") in f
    assert "reversible beats checkpoint-sqrt on activation peak (10.00 MiB vs 20.00 MiB)." in f
    assert "Lowest parameters: plain, checkpoint-sqrt (100)." in f
    assert all(line in res.to_markdown() for line in f)


def test_time_strategies_interleaves_rounds():
    models = {"a": nn.Sequential(nn.Flatten(), nn.Linear(12, 10)), "b": nn.Sequential(nn.Flatten(), nn.Linear(12, 10))}
    rounds = []
    times = time_strategies(models, 4, (3, 2, 2), device=torch.device("cpu"), dtype=torch.float32,
                            optimizer="sgd", repeats=3, on_round=lambda: rounds.append(1))
    assert len(rounds) == 3 and set(times) == {"a", "b"}
    assert all(len(v) == 3 and all(t > 0 for t in v) for v in times.values())
    assert all(p.grad is None for m in models.values() for p in m.parameters())


# -- CLI -----------------------------------------------------------------------------------------------


def test_cli_compare_end_to_end(tmp_path, capsys, monkeypatch):
    # real memory estimates; step times stubbed (VGG-19 steps are slow on 2 cores; the timing
    # mechanics are tested above and for real by the notebook test)
    from memprof.api import compare as compare_mod

    monkeypatch.setattr(compare_mod, "time_strategies",
                        lambda models, *a, **k: {n: [0.2 * (i + 1)] * 3 for i, n in enumerate(models)})
    out = tmp_path / "out"
    argv = ["compare", "--strategies", "plain", "--batch-size", "1", "--repeats", "3", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "plain" in text and "step time / plain (measured)" in text
    assert sorted(p.name for p in out.iterdir()) == ["compare.md", "compare.png"]
    md = (out / "compare.md").read_text()
    assert md.startswith("Generated by `memprof compare --strategies plain --batch-size 1 --estimate --repeats 3")
    assert re.search(r"\| plain .*\| +1\.00 \|", md)
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # without timing: memory only, no plot
    out2 = tmp_path / "out2"
    assert main([*argv[:-1], str(out2), "--no-time", "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("strategy,model,params,") and header.endswith(",status"), header
    assert sorted(p.name for p in out2.iterdir()) == ["compare.md"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strategies", "plain,magic"], "unknown strategy 'magic'"),
        (["--strategies", ""], "comma-separated"),
        (["--strategies", "offload"], "needs --measure on a CUDA device"),
        (["--batch-size", "0"], "batch size"),
        (["--repeats", "x"], "repeats"),
        (["--format", "xml"], "unknown format"),
    ],
)
def test_cli_compare_bad_input(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["compare", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memprof compare: error:") and message in err
    assert not out.exists()


# -- GPU only -------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_on_cuda_saves_device_memory():
    res = compare_strategies("offload", batch_size=64, mode="measured", device="cuda", repeats=1)
    rows = {r["strategy"]: r for r in res.rows}
    assert rows["offload"]["activation_peak_bytes"] < 0.5 * rows["plain"]["activation_peak_bytes"]
    assert rows["offload"]["peak_bytes"] < rows["plain"]["peak_bytes"]


# -- the report is not stale ----------------------------------------------------------------------------


def test_report_compare_md_is_current(untimed):
    path = REPORTS / "compare.md"
    assert path.exists(), "reports/compare.md is missing: run `memprof report compare`"
    md = path.read_text()
    assert md.startswith("Generated by `memprof report compare`")
    assert f"at batch {REPORT_BATCH_SIZE} (estimated memory" in md
    lines = {m.group(1): line for line in md.splitlines() if (m := re.match(r"\|\s*([a-z-]+)\s*\|", line))}
    assert set(lines) >= set(default_strategies()), "stale: run `memprof report compare`"
    for r in untimed.rows:  # memory and parameters are deterministic in estimate mode
        line = lines[r["strategy"]]
        for figure in (f"{r['params']:,}", format_bytes(r["activation_peak_bytes"], "MiB"),
                       format_bytes(r["peak_bytes"], "MiB")):
            assert figure in line, f"stale reports/compare.md ({r['strategy']}: {figure}): run `memprof report compare`"
    assert (REPORTS / "compare.png").exists()
