"""The one result protocol (render, to_dataframe, to_json, plot) and the module-boundary component."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

import memprof  # noqa: E402
from memprof.aggregation.sweep import SweepData, add_savings, empty_row  # noqa: E402
from memprof.recording.boundaries import ModuleBoundaries  # noqa: E402
from memprof.rendering.sweep import SweepResult  # noqa: E402
from memprof.train import build_classification_report  # noqa: E402
from memprof.validation import UsageError  # noqa: E402
from memprof.vocabulary import FORMATS, Mode  # noqa: E402


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def _sweep() -> SweepResult:
    rows = []
    for model, scale in (("vgg19", 4), ("revvgg", 1)):
        for b in (1, 8):
            row = empty_row(model, b)
            row.update({"seed_activation_bytes": 100 * b * scale, "saved_bytes": 90 * b * scale,
                        "activation_peak_bytes": 80 * b * scale, "peak_bytes": 1000 + 80 * b * scale})
            rows.append(row)
    add_savings(rows, "vgg19")
    return SweepResult.from_data(SweepData(rows, ["vgg19", "revvgg"], [1, 8], Mode.ESTIMATED, "cpu", "float32", "sgd"))


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    model = tiny()
    return {
        "table": memprof.layer_table(model, (3, 8, 8), batch_size=2),
        "step": memprof.profile_step(model, 2, (3, 8, 8), estimate=True),
        "sweep": _sweep(),
        "report": build_classification_report(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3),
    }


@pytest.mark.parametrize("name", ["table", "step", "sweep", "report"])
def test_render_dispatches_on_the_format(results, name):
    r = results[name]
    assert r.render("csv") == r.to_csv()
    assert r.render("json") == r.to_json()
    assert r.render("text") == r.to_text() == str(r)
    assert r.render("markdown").strip() and r.render("markdown") != r.render("text")
    json.loads(r.render("json"))
    with pytest.raises(UsageError, match="unknown format 'html'; allowed: " + ", ".join(FORMATS)):
        r.render("html")


@pytest.mark.parametrize("name", ["table", "step", "sweep", "report"])
def test_dataframe_and_plot(results, name, tmp_path):
    r = results[name]
    assert len(r.to_dataframe()) > 0
    path = tmp_path / f"{name}.png"
    fig = r.plot(path)
    assert isinstance(fig, Figure)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_sweep_savings_are_against_the_first_model():
    df = _sweep().to_dataframe()
    rev = df[df["model"] == "revvgg"]
    assert list(rev["activation_peak_bytes_saving_pct"]) == [75.0, 75.0]
    assert df[df["model"] == "vgg19"]["activation_peak_bytes_saving_pct"].isna().all()


def test_module_boundaries_order_and_cleanup():
    """Forward boundaries nest; each backward starts at its output's gradient and ends at its input's,
    last module first; every hook is gone afterwards."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    events: list[tuple[str, str, str]] = []
    phase = ["forward"]
    bounds = ModuleBoundaries(model, in_backward=lambda: phase[0] == "backward")
    bounds.register_user_hooks(
        pre_fw=lambda name, ph: events.append(("start", name, ph)) or len(events),
        post_fw=lambda name, ph, token: events.append(("end", name, ph)),
        pre_bw=lambda name: events.append(("bw start", name, "backward")),
        post_bw=lambda name: events.append(("bw end", name, "backward")),
    )
    x = torch.randn(2, 3, requires_grad=True)
    with bounds.track():
        out = model(x).sum()
        phase[0] = "backward"
        out.backward()
    assert events[:2] == [("start", "", "forward"), ("start", "0", "forward")]
    assert events[events.index(("end", "2", "forward")) + 1] == ("end", "", "forward")
    bw = [e[:2] for e in events if e[0].startswith("bw")]
    for name in ("", "0", "1", "2"):  # every module's backward starts, then ends
        assert bw.index(("bw start", name)) < bw.index(("bw end", name))
    assert bw.index(("bw end", "2")) < bw.index(("bw end", "1")) < bw.index(("bw end", "0"))  # in reverse
    assert bounds.module_names == {"": "Sequential", "0": "Linear", "1": "Tanh", "2": "Linear"}
    n = len(events)
    model(torch.randn(2, 3, requires_grad=True)).sum().backward()  # module hooks are gone
    assert len(events) == n
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
