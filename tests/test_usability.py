"""What a new user trips over (issue 14), tested through the command line and the public API.

Every test here runs ``memprof`` in a fresh process (``python -m memprof``) or calls a public
function, so it does not depend on where the code lives inside the package. Out-of-memory is
provoked on the CPU with an address-space limit (``RLIMIT_AS``) on the child process: the
limit leaves room for torch and a batch-2 step, and a batch of 20,000 images (a 5 GiB first
convolution output for VGG-19) cannot fit under it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30

#: Address-space limit of the out-of-memory tests. `import torch, memprof` maps about 3.5 GiB
#: of address space here and a measured batch-2 VGG-19 step peaks at about 4.5 GiB (VmPeak),
#: so 6 GiB lets small steps run and fails a batch of OOM_BATCH inside the model.
AS_LIMIT = 6 * GiB
OOM_BATCH = 20000
#: Lines PyTorch's profiler (kineto) prints on stderr that a user must not see.
CHATTER = ("USDT:", "gpuGetDeviceCount")


def _limit_as(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run_cli(*args: str, cwd: Path | None = None, limit: int | None = None, timeout: float = 900,
            python_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m memprof ARGS`` in a fresh process, with this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"  # one thread: fewer per-thread arenas under the address-space limit
    env["MALLOC_ARENA_MAX"] = "2"
    env.pop("MEMPROF_SHOW_PROFILER_LOG", None)
    return subprocess.run([sys.executable, *python_args, "-m", "memprof", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limit_as(limit) if limit else None)


def run_python(code: str, cwd: Path | None = None, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a fresh process (public API under an address-space limit)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900, preexec_fn=_limit_as(limit) if limit else None)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The non-empty stderr lines."""
    return [line for line in proc.stderr.splitlines() if line.strip()]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, exactly one stderr line, no traceback, containing every needle; returns the line."""
    lines = error_lines(proc)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Out of memory is a result, never a crash
# ------------------------------------------------------------------------------------------------

OOM_ROW = re.compile(r"out of memory at batch (\d+): needed ([0-9.]+ (?:B|KiB|MiB|GiB|TiB)) more")


@pytest.mark.parametrize("batch", [str(OOM_BATCH), "10000000"], ids=["inside-the-model", "the-input-itself"])
def test_profile_out_of_memory_is_one_line(batch):
    proc = run_cli("profile", "vgg19", "--batch-size", batch, limit=AS_LIMIT)
    line = assert_one_line_error(proc, "out of memory", f"batch {batch}")
    assert "rejects" not in line, line  # an allocation failure is not a model rejecting its input
    assert re.search(r"needed [0-9.]+ (?:MiB|GiB|TiB) more", line), line
    assert proc.stdout == ""


def test_measured_sweep_marks_the_failing_size_and_keeps_the_others(tmp_path):
    import pandas as pd

    proc = run_cli("sweep", "--measure", "--models", "vgg19", "--batch-sizes", f"1,{OOM_BATCH}",
                   "--out", str(tmp_path), limit=AS_LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert list(df["batch_size"]) == [1, OOM_BATCH]
    ok, oom = df.iloc[0], df.iloc[1]
    assert ok["status"] == "ok" and ok["peak_bytes"] > 0
    m = OOM_ROW.fullmatch(str(oom["status"]))
    assert m and int(m.group(1)) == OOM_BATCH, oom["status"]
    assert pd.isna(oom["peak_bytes"])
    assert f"out of memory at batch {OOM_BATCH}" in proc.stdout


def test_measured_sweep_plot_marks_out_of_memory_rows():
    code = textwrap.dedent(f"""
        import json, memprof
        r = memprof.sweep("vgg19", "1,{OOM_BATCH}", mode="measured", progress=False)
        fig = r.plot()
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        texts += [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        texts += [lab.get_text() for ax in fig.axes for lab in ax.get_xticklabels()]
        print(json.dumps({{"status": [row["status"] for row in r.rows], "texts": texts}}))
    """)
    proc = run_python(code, limit=AS_LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"][0] == "ok" and OOM_ROW.fullmatch(out["status"][1]), out["status"]
    assert any("out of memory" in t for t in out["texts"]), out["texts"]


def test_measured_compare_marks_rows_out_of_memory():
    proc = run_cli("compare", "--measure", "--strategies", "reversible", "--batch-size", str(OOM_BATCH),
                   "--no-time", "--format", "json", limit=AS_LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)["rows"]
    assert [r["strategy"] for r in rows] == ["plain", "reversible"]
    for r in rows:
        m = OOM_ROW.fullmatch(r["status"])
        assert m and int(m.group(1)) == OOM_BATCH, r


def test_train_out_of_memory_is_one_line(tmp_path):
    proc = run_cli("train", "--model", "vgg19", "--synthetic", "--synthetic-size", str(OOM_BATCH),
                   "--batch-size", str(OOM_BATCH), "--epochs", "1", "--limit-batches", "1", "--no-progress",
                   "--out", str(tmp_path / "run"), limit=AS_LIMIT)
    line = assert_one_line_error(proc, "out of memory", f"batch {OOM_BATCH}")
    assert "rejects" not in line


def test_a_model_that_rejects_its_input_is_not_out_of_memory():
    proc = run_cli("profile", "vgg19", "--input-shape", "3,2,2", "--batch-size", "2")
    line = assert_one_line_error(proc, "rejects")
    assert "out of memory" not in line


# ------------------------------------------------------------------------------------------------
# Checked before the work, named as the user named it
# ------------------------------------------------------------------------------------------------


def test_profile_timeline_path_checked_before_the_profile():
    proc = run_cli("profile", "vgg19", "--estimate", "--batch-size", "2", "--timeline", "/proc/x.png")
    assert_one_line_error(proc, "/proc/x.png")
    assert proc.stdout == ""  # nothing profiled, nothing printed
    # measured at a batch that cannot fit: had the step run first, the error would be out of memory
    proc = run_cli("profile", "vgg19", "--batch-size", str(OOM_BATCH), "--timeline", "/proc/x.png", limit=AS_LIMIT)
    line = assert_one_line_error(proc, "/proc/x.png")
    assert "out of memory" not in line


def test_train_out_checked_before_training():
    # A batch that cannot fit: had training started, the error would be out of memory.
    proc = run_cli("train", "--model", "vgg19", "--synthetic", "--synthetic-size", str(OOM_BATCH),
                   "--batch-size", str(OOM_BATCH), "--epochs", "1", "--limit-batches", "1", "--no-progress",
                   "--out", "/proc/x", limit=AS_LIMIT)
    line = assert_one_line_error(proc, "/proc/x")
    assert "out of memory" not in line
    assert proc.stdout == ""


@pytest.mark.parametrize("target", ["proc", "directory"])
def test_table_out_errors_name_the_users_path(tmp_path, target):
    out = "/proc/x" if target == "proc" else str(tmp_path)
    proc = run_cli("table", "vgg19", "--out", out)
    line = assert_one_line_error(proc, out)
    assert ".tmp" not in line and "npycnm" not in line


def test_report_out_checked_before_work():
    proc = run_cli("report", "tables", "--out", "/proc/x")
    assert_one_line_error(proc, "/proc/x")
    assert proc.stdout == ""


TRAIN_ARGS = ("--model", "vgg19", "--synthetic", "--synthetic-size", "8", "--batch-size", "2",
              "--limit-batches", "1", "--no-progress")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch run: its output directory and its last checkpoint."""
    out = tmp_path_factory.mktemp("run")
    proc = run_cli("train", *TRAIN_ARGS, "--epochs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "checkpoints" / "epoch0001.pt"
    assert ckpt.is_file()
    return out, ckpt


def test_resume_from_a_directory_says_so(finished_run):
    out, _ = finished_run
    proc = run_cli("train", *TRAIN_ARGS, "--epochs", "2", "--resume", str(out), "--out", str(out / "again"))
    assert_one_line_error(proc, "directory", str(out))


def test_resume_from_a_truncated_checkpoint_says_so(finished_run, tmp_path):
    _, ckpt = finished_run
    cut = tmp_path / "cut.pt"
    data = ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    proc = run_cli("train", *TRAIN_ARGS, "--epochs", "2", "--resume", str(cut), "--out", str(tmp_path / "o"))
    line = assert_one_line_error(proc, str(cut))
    assert "not a memprof training checkpoint" not in line, line
    assert re.search(r"truncated|corrupt|damaged|incomplete", line), line


def test_resume_with_a_changed_batch_size_is_refused(finished_run, tmp_path):
    _, ckpt = finished_run
    args = [a if a != "2" else "4" for a in TRAIN_ARGS]  # --batch-size 4 instead of 2
    proc = run_cli("train", *args, "--epochs", "2", "--resume", str(ckpt), "--out", str(tmp_path / "o"))
    line = assert_one_line_error(proc, "batch size")
    assert "2" in line and "4" in line, line
    assert not (tmp_path / "o" / "train_log.csv").exists()


def test_resume_at_the_last_epoch_claims_only_what_it_wrote(finished_run, tmp_path):
    _, ckpt = finished_run
    out = tmp_path / "o"
    proc = run_cli("train", *TRAIN_ARGS, "--epochs", "1", "--resume", str(ckpt), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    claimed = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()
               if re.match(r"(log|checkpoint|report): ", line)]
    assert claimed, proc.stdout
    for path in claimed:
        assert Path(path).is_file(), (path, proc.stdout)


def test_a_factory_that_exits_is_one_line(tmp_path):
    write_module(tmp_path, "exiting", """
        import sys
        def make():
            sys.exit(3)
    """)
    proc = run_cli("profile", "exiting:make", "--input-shape", "4", "--estimate", cwd=tmp_path)
    assert_one_line_error(proc, "exiting:make", "3")


def test_fit_starts_at_the_smallest_batch_the_model_accepts(tmp_path):
    write_module(tmp_path, "bnnet", """
        from torch import nn
        def make():
            return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    """)
    proc = run_cli("fit", "bnnet:make", "--input-shape", "8", "--memory", "64MiB", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"batch size (\d+) fits", proc.stdout)
    assert m and int(m.group(1)) > 1, proc.stdout
    assert re.search(r"batch(?: size)? 1", proc.stdout) and "reject" in proc.stdout, proc.stdout


def test_fit_with_a_budget_below_batch_one_is_an_error():
    proc = run_cli("fit", "vgg19", "--memory", "1KiB")
    line = assert_one_line_error(proc, "batch size 1", "1.00 KiB")
    assert re.search(r"needs [0-9.]+ MiB", line), line


def test_fit_negative_memory_shows_the_real_parse_error():
    proc = run_cli("fit", "vgg19", "--memory", "-5GiB")
    line = assert_one_line_error(proc, "-5GiB")
    assert "expected one argument" not in line
    assert "positive" in line


def test_fit_says_when_the_search_hits_its_cap(tmp_path):
    write_module(tmp_path, "tiny", """
        from torch import nn
        def make():
            return nn.Linear(4, 2)
    """)
    proc = run_cli("fit", "tiny:make", "--input-shape", "4", "--memory", "1TiB", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\bcap\b|upper limit|largest batch size searched", proc.stdout), proc.stdout
    assert "16777216" in proc.stdout.replace(",", "")


def test_sizes_scale_to_tib():
    import memprof

    assert memprof.format_bytes(3 * (1 << 40)) == "3.00 TiB"
    assert memprof.format_bytes(1536 * (1 << 30)) == "1.50 TiB"
    proc = run_cli("profile", "vgg19", "--batch-size", "10000000", "--estimate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TiB" in proc.stdout
    assert not re.search(r"\d{5,}\.\d+ MiB", proc.stdout), proc.stdout[:2000]


# ------------------------------------------------------------------------------------------------
# The loss is never a silent guess
# ------------------------------------------------------------------------------------------------

DICT_MODELS = """
    import torch
    from torch import nn

    class FeaturesAndLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 8192)
            self.head = nn.Linear(8192, 10)

        def forward(self, x):
            features = self.body(x)  # (B, 8192): not class scores
            return {"features": features, "logits": self.head(features)}

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 4)
            self.b = nn.Linear(8, 4)

        def forward(self, x):
            return {"first": self.a(x), "second": self.b(x)}

    def features_and_logits():
        return FeaturesAndLogits()

    def two_outputs():
        return TwoOutputs()
"""


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_profile_names_the_output_and_loss_it_used(tmp_path, fmt):
    write_module(tmp_path, "dictnets", DICT_MODELS)
    proc = run_cli("profile", "dictnets:features_and_logits", "--input-shape", "8", "--batch-size", "4",
                   "--estimate", "--format", fmt, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if fmt == "json":
        loss = json.loads(proc.stdout)["loss"]
        assert loss["output"] == "logits" and loss["function"] == "cross_entropy", loss
    else:
        line = next((ln for ln in proc.stdout.splitlines() if re.match(r"\W*loss\b", ln)), None)
        assert line is not None and "logits" in line and "cross" in line.lower(), proc.stdout[:2000]


def test_the_head_gets_its_gradient():
    from torch import nn

    import memprof

    class FeaturesAndLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 8192)
            self.head = nn.Linear(8192, 10)

        def forward(self, x):
            features = self.body(x)  # (B, 8192)
            return {"features": features, "logits": self.head(features)}

    model = FeaturesAndLogits()
    prof = memprof.profile_step(model, 4, (8,), estimate=True)
    assert prof.to_dict()["loss"] == {"output": "logits", "function": "cross_entropy"}
    head = next(m for m in prof.to_dict()["modules"] if m["name"] == "head")
    assert head["backward_peak_bytes"] is not None  # the head took part in backward


def test_an_ambiguous_output_is_an_error_that_says_how_to_choose(tmp_path):
    write_module(tmp_path, "dictnets", DICT_MODELS)
    proc = run_cli("profile", "dictnets:two_outputs", "--input-shape", "8", "--batch-size", "4", "--estimate",
                   cwd=tmp_path)
    line = assert_one_line_error(proc, "loss_fn", "first", "second")
    assert "track" in line, line


def test_loss_fn_chooses_the_loss():
    import memprof
    from torch import nn

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 4)
            self.b = nn.Linear(8, 4)

        def forward(self, x):
            return {"first": self.a(x), "second": self.b(x)}

    prof = memprof.profile_step(TwoOutputs(), 4, (8,), estimate=True,
                                loss_fn=lambda out, inputs: out["first"].sum() + out["second"].pow(2).mean())
    assert prof.to_dict()["loss"]["function"] == "loss_fn"


# ------------------------------------------------------------------------------------------------
# Startup, noise and formats
# ------------------------------------------------------------------------------------------------


def imported_modules(proc: subprocess.CompletedProcess[str]) -> set[str]:
    """Top-level packages a ``python -X importtime`` run imported."""
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("args", [("--help",), ("profile", "--help"), ("profile",), ("bogus-verb",),
                                  ("profile", "vgg19", "--format", "yaml"), ("fit", "vgg19", "--memory", "-5GiB")],
                         ids=["help", "verb-help", "missing-argument", "unknown-verb", "bad-choice", "bad-size"])
def test_help_and_argument_errors_do_not_import_torch(args):
    proc = run_cli(*args, python_args=("-X", "importtime"))
    assert proc.returncode in (0, 2), proc.stderr[-3000:]
    modules = imported_modules(proc)
    assert "memprof" in modules
    assert not {"torch", "torchvision", "pandas", "matplotlib", "numpy"} & modules, sorted(modules)


def test_import_memprof_does_not_import_torch():
    proc = run_python("import sys, memprof; print(memprof.__version__, 'torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == "False"
    proc = run_python("import memprof; print(type(memprof.profile_step).__name__, memprof.list_models()[:1])")
    assert proc.returncode == 0 and proc.stdout.startswith("function"), proc.stderr


def test_table_of_a_registered_model_imports_no_plotting():
    proc = run_cli("table", "vgg19", "--batch-size", "2", python_args=("-X", "importtime"))
    assert proc.returncode == 0
    modules = imported_modules(proc)
    # torch itself imports tqdm and numpy; pandas renders the table (0.8 s CPU here, torch 3.7 s)
    assert not {"matplotlib", "torchvision", "scipy"} & modules, sorted(modules)


def test_measured_runs_keep_stderr_clean_of_profiler_chatter_but_not_of_real_errors(tmp_path):
    write_module(tmp_path, "noisy", """
        import os, sys
        from torch import nn

        class Noisy(nn.Linear):
            def forward(self, x):
                os.write(2, b"noisy: a real problem written to fd 2\\n")
                return super().forward(x)

        def make():
            return Noisy(8, 3)
    """)
    proc = run_cli("profile", "noisy:make", "--input-shape", "8", "--batch-size", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for word in CHATTER:
        assert word not in proc.stderr, proc.stderr
    assert "noisy: a real problem written to fd 2" in proc.stderr
    proc = run_cli("profile", "vgg19", "--batch-size", "2")
    assert proc.returncode == 0
    assert not [w for w in CHATTER if w in proc.stderr], proc.stderr


def test_csvs_are_plain_and_provenance_is_beside_them(tmp_path, finished_run):
    import pandas as pd

    proc = run_cli("sweep", "--models", "vgg19,revvgg", "--batch-sizes", "1,2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert list(df.columns[:3]) == ["model", "batch_size", "status"], list(df.columns)
    beside = [p for p in tmp_path.iterdir() if p.name != "sweep.csv" and p.suffix in (".md", ".json", ".txt")]
    assert any("Generated by" in p.read_text() for p in beside), [p.name for p in tmp_path.iterdir()]
    out, _ = finished_run
    report = pd.read_csv(out / "report" / "classification_report.csv")
    assert report.columns[0] == "label", list(report.columns)
    for path in list((ROOT / "reports").glob("*.csv")):
        assert not path.read_text().startswith("#"), path


def test_profile_module_section_fits_a_terminal_and_is_adjustable():
    proc = run_cli("profile", "revvgg", "--estimate", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) <= 60, len(proc.stdout.splitlines())

    def module_rows(text: str) -> list[str]:
        lines = text.splitlines()
        start = lines.index("Per module")
        dash = next(i for i in range(start + 2, len(lines)) if lines[i].startswith("----"))
        rows = []
        for line in lines[dash + 1:]:
            if not line.strip():
                break
            rows.append(line)
        return rows

    top = run_cli("profile", "revvgg", "--estimate", "--batch-size", "2", "--top", "5")
    assert top.returncode == 0, top.stderr[-3000:]
    assert len(module_rows(top.stdout)) == 5
    depth = run_cli("profile", "revvgg", "--estimate", "--batch-size", "2", "--depth", "1", "--top", "0")
    assert depth.returncode == 0, depth.stderr[-3000:]
    names = [row.split()[0] for row in module_rows(depth.stdout)]
    assert "revblock1" in names and not [n for n in names if "." in n], names


def test_compare_plot_has_a_legend_and_labels_that_do_not_overlap():
    import memprof

    result = memprof.compare_strategies(batch_size=8, repeats=1)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = result.plot()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None
    named = " ".join(t.get_text() for t in legend.get_texts())
    for strategy in result.to_dataframe()["strategy"]:
        assert strategy in named, (strategy, named)
    boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_sweep_of_one_model_has_no_empty_savings_panel():
    import memprof

    fig = memprof.sweep("vgg19", "1,2", progress=False).plot()
    for ax in fig.axes:
        if "saving" in ax.get_title().lower():  # a savings panel needs a second model: say why, or omit it
            assert [t for t in ax.texts if t.get_text()], f"empty panel {ax.get_title()!r}"
    assert fig.axes


def test_readme_says_how_to_install_a_cpu_only_torch():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "download.pytorch.org/whl/cpu" in text


def test_no_verb_leaks_a_traceback_for_unwritable_outputs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("sweep", "--models", "vgg19", "--batch-sizes", "1", "--out", str(blocker / "sub"))
    assert_one_line_error(proc, str(blocker / "sub"))


def test_builtin_model_names_for_help_are_the_registered_ones():
    from memprof.models import list_models
    from memprof.vocabulary import BUILTIN_MODELS

    # --help names them without importing torch: every name it gives must be a model
    assert set(BUILTIN_MODELS) <= set(list_models()), sorted(set(BUILTIN_MODELS) - set(list_models()))


def test_every_public_name_resolves():
    import memprof

    for name in memprof.__all__:
        assert getattr(memprof, name) is not None, name
    assert "profile_step" in dir(memprof)
