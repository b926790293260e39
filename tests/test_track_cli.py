"""`memprof run SCRIPT`: a user's script under memprof.track(), as python would run it."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from torch import nn

import memprof
from memprof.cli import main

LOOP = """
import sys
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    opt.zero_grad(set_to_none=True)
    model(torch.randn(4, 8)).square().mean().backward()
    opt.step()
"""


def _script(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_run_reports_every_step_and_passes_argv(tmp_path, capsys):
    script = _script(tmp_path, LOOP + "\nprint('argv', sys.argv, __name__)\n")
    assert main(["run", "--format", "json", str(script), "4"]) == 0
    out = capsys.readouterr().out
    assert f"argv [{str(script)!r}, '4'] __main__" in out
    doc = json.loads(out[out.index("{"):])
    assert len(doc["steps"]) == 4 and doc["exit_status"] == 0
    keys = set(memprof.profile_step(nn.Linear(4, 2), 2, (4,)).to_dict())
    assert all(set(step) == keys for step in doc["steps"])
    assert doc["steps"][-1]["optimizer"] == "sgd"


def test_steps_option_stops_cleanly(tmp_path, capsys):
    script = _script(tmp_path, LOOP + "\nprint('script output')\n")
    out = tmp_path / "report.json"
    assert main(["run", "--steps", "2", "--format", "json", "--out", str(out), str(script), "10"]) == 0
    assert "script output" not in capsys.readouterr().out  # stopped before the end
    doc = json.loads(out.read_text())
    assert len(doc["steps"]) == 2 and any("--steps" in n for n in doc["notes"])


def test_exit_status_is_the_scripts(tmp_path, capsys):
    script = _script(tmp_path, LOOP + "\nsys.exit(3)\n")
    assert main(["run", str(script)]) == 3
    assert "Steps recorded" in capsys.readouterr().out


def test_raising_script_shows_traceback_and_report(tmp_path, capsys):
    script = _script(tmp_path, LOOP + "\nraise KeyError('boom')\n")
    assert main(["run", "--format", "markdown", str(script), "2"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" in captured.err and "KeyError: 'boom'" in captured.err
    assert "memprof/cli" not in captured.err  # memprof's own frames left out
    assert "Steps recorded" in captured.out and re.search(r"^\|\s+2 \|", captured.out, re.M)


def test_timeline_written(tmp_path, capsys):
    script = _script(tmp_path, LOOP)
    png = tmp_path / "t.png"
    assert main(["run", "--timeline", str(png), str(script), "2"]) == 0
    assert png.stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["run", "missing_script.py"], "script 'missing_script.py' not found"),
    (["run", "--steps", "0", "x.py"], "--steps must be a positive integer"),
    (["run", "--format", "yaml", "x.py"], "unknown format 'yaml'"),
    (["run", "--mode", "slow", "x.py"], "unknown mode 'slow'"),
])
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_no_optimizer_step_reports_whole_run_and_exits_2(tmp_path, capsys):
    script = _script(tmp_path, "import torch\nm = torch.nn.Linear(4, 4)\nm(torch.randn(2, 4)).sum().backward()\n")
    assert main(["run", str(script)]) == 2
    captured = capsys.readouterr()
    assert "never called optimizer.step()" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "Steps recorded" in captured.out
