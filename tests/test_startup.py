"""Starting without torch: every verb's ``--help`` and argument errors, and the cached ``memprof table``.

Each CLI run here is a fresh interpreter (``python -c``, running ``memprof`` as ``python -m``
would) that reports afterwards whether ``torch`` or ``pandas`` were imported
(NOTE [ Starting without torch ] in :mod:`memprof.vocabulary`, NOTE [ The result cache ] in
:mod:`memprof.cli._cache`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: runs memprof with the given argv, then prints which heavy packages were imported
PROBE = """
import runpy, sys
sys.argv = ["memprof", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("memprof", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print("\\nIMPORTED " + ",".join(sorted(m for m in ("torch", "pandas") if m in sys.modules)))
sys.exit(code)
"""


def run_memprof(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], str, set[str]]:
    """(process, its output without the probe's line, heavy packages imported) of a fresh ``memprof ARGS``."""
    full = dict(os.environ if env is None else env)
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT), full.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=full, capture_output=True, text=True,
                          timeout=900)
    out, _, last = proc.stdout.rpartition("\nIMPORTED ")
    assert _ == "\nIMPORTED ", proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, out, set(filter(None, last.strip().split(",")))


# ------------------------------------------------------------------------------------------------
# --help and argument errors
# ------------------------------------------------------------------------------------------------

VERBS = ("table", "profile", "fit", "sweep", "compare", "train", "report", "run")

#: verb -> a representative bad argument (the command line after the verb) and a word of its error line
BAD_ARGUMENTS = {
    "table": (["vgg19", "--format", "yaml"], "'yaml'"),
    "table-model": (["nosuch"], "'nosuch'"),
    "table-batch": (["vgg19", "--batch-size", "0"], "batch size"),
    "table-option": (["vgg19", "--model-option", "depth=6"], "'depth'"),
    "profile": (["vgg19", "--format", "yaml"], "'yaml'"),
    "profile-option": (["revvit", "--model-option", "depth=many"], "depth"),
    "fit": (["vgg19", "--memory", "-5GiB"], "-5GiB"),
    "sweep": (["--format", "yaml"], "'yaml'"),
    "compare": (["--family", "resnet"], "'resnet'"),
    "train": (["--amp", "fp8"], "'fp8'"),
    "report": (["--bogus"], "--bogus"),
    "run": (["no_such_script.py"], "no_such_script.py"),
}


@pytest.mark.parametrize("verb", ["", *VERBS])
def test_help_does_not_import_torch(verb):
    proc, out, imported = run_memprof(*([verb] if verb else []), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: memprof" in out and proc.stderr == ""
    assert not imported, imported


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_argument_error_is_one_line_without_torch(case):
    args, word = BAD_ARGUMENTS[case]
    proc, out, imported = run_memprof(case.split("-")[0], *args)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert out.strip() == ""
    assert len(lines) == 1 and lines[0].startswith("memprof"), lines
    assert word in lines[0], lines
    assert not imported, imported


def test_torch_free_words_match_the_library():
    """The words --help shows without torch (memprof.vocabulary) are the library's own."""
    from memprof.aggregation.compare import FAMILIES, list_strategies
    from memprof.api.sweep import DEFAULT_BATCH_SIZES, DEFAULT_MODELS
    from memprof.models import list_models
    from memprof.train.config import DEVICES, AmpMode, TrainConfig
    from memprof.train.data import DATASETS
    from memprof.vocabulary import (
        AMP_MODES,
        BUILTIN_MODELS,
        COMPARE_FAMILIES,
        SWEEP_BATCH_SIZES,
        SWEEP_MODELS,
        TRAIN_DATASETS,
        TRAIN_DEFAULTS,
        TRAIN_DEVICES,
    )

    assert sorted(BUILTIN_MODELS) == list_models()
    assert {f: tuple(list_strategies(f)) for f in FAMILIES} == COMPARE_FAMILIES
    assert (DEFAULT_MODELS, DEFAULT_BATCH_SIZES) == (SWEEP_MODELS, SWEEP_BATCH_SIZES)
    assert (TRAIN_DEVICES, AMP_MODES, TRAIN_DATASETS) == (DEVICES, tuple(m.value for m in AmpMode), DATASETS)
    defaults = TrainConfig()
    assert {k: getattr(defaults, k) for k in TRAIN_DEFAULTS} == TRAIN_DEFAULTS
