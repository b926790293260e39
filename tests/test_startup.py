"""Starting without torch: every verb's ``--help`` and argument errors, and the cached ``memprof table``.

Each CLI run here is a fresh interpreter (``python -c``, running ``memprof`` as ``python -m``
would) that reports afterwards whether ``torch`` or ``pandas`` were imported
(NOTE [ Starting without torch ] in :mod:`memprof.vocabulary`, NOTE [ The result cache ] in
:mod:`memprof.cache`).
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
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=full, capture_output=True, text=True, check=False,
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
    "profile-model": (["nosuch", "--estimate"], "'nosuch'"),
    "profile-batch": (["vgg19", "--batch-size", "0"], "batch size"),
    "profile-dtype": (["vgg19", "--dtype", "int8"], "'int8'"),
    "profile-optimizer": (["vgg19", "--optimizer", "lion"], "'lion'"),
    "fit": (["vgg19", "--memory", "-5GiB"], "-5GiB"),
    "fit-model": (["nosuch", "--memory", "1GiB"], "'nosuch'"),
    "sweep-option": (["--models", "vit,mypkg:make", "--model-option", "depth=2"], "'mypkg:make'"),
    "sweep-batches": (["--batch-sizes", "1,0"], "1,0"),
    "compare-strategy": (["--strategies", "plain,nosuch"], "'nosuch'"),
    "compare-repeats": (["--repeats", "0"], "repeats"),
    "sweep": (["--format", "yaml"], "'yaml'"),
    "compare": (["--family", "resnet"], "'resnet'"),
    "train": (["--amp", "fp8"], "'fp8'"),
    "train-epochs": (["--epochs", "0"], "epochs"),
    "train-lr": (["--lr", "-1"], "learning rate"),
    "train-momentum": (["--momentum", "1"], "momentum"),
    "train-fp16": (["--amp", "fp16", "--device", "cpu"], "fp16"),
    "train-option": (["--model", "vgg19", "--model-option", "depth=2"], "'depth'"),
    "train-heads": (["--model", "vit", "--model-option", "width=100"], "divisible by heads 3"),
    "train-reversible": (["--model", "revvit", "--model-option", "reversible=false"], "--no-reversible"),
    "table-heads": (["vit", "--model-option", "width=100"], "divisible by heads 3"),
    "profile-heads": (["revvit", "--model-option", "heads=5"], "divisible by heads 5"),
    "sweep-heads": (["--models", "vit,revvit", "--model-option", "width=100"], "divisible by heads 3"),
    "compare-heads": (["--family", "vit", "--model-option", "width=100"], "divisible by heads 3"),
    "table-patch": (["vit", "--model-option", "patch=5"], "patch size 5"),
    "table-gain": (["vgg19", "--model-option", "classifier_input_gain=0"], "positive number"),
    "train-gain": (["--model", "vgg19", "--model-option", "classifier_input_gain=-1"], "positive number"),
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


def test_model_options_match_the_builders():
    """vocabulary.MODEL_OPTIONS (read by --help without torch) names each builder's options and defaults."""
    from dataclasses import asdict

    from memprof.aggregation.compare import FAMILIES
    from memprof.models import list_models
    from memprof.models.registry import check_model_options
    from memprof.models.vit import VIT_CFGS
    from memprof.vocabulary import COMPARE_REFERENCES, MODEL_OPTIONS

    assert sorted(MODEL_OPTIONS) == list_models()
    for name, options in MODEL_OPTIONS.items():
        check_model_options(name, options)  # every default is accepted as an option
    vit = asdict(VIT_CFGS["tiny"])
    assert MODEL_OPTIONS["vit"] == vit
    assert {k: v for k, v in MODEL_OPTIONS["revvit"].items() if k != "reversible"} == vit
    assert {f: t["plain"].model for f, t in FAMILIES.items()} == COMPARE_REFERENCES
    import inspect

    from memprof.models import get_model_info
    for name in ("vgg19", "revvgg", "irevvgg"):  # the other builders' defaults, from their signatures
        params = inspect.signature(get_model_info(name).builder).parameters
        defaults = {k: p.default for k, p in params.items() if k != "num_classes"}
        assert {k: v for k, v in MODEL_OPTIONS[name].items() if k != "reversible"} == defaults


# ------------------------------------------------------------------------------------------------
# The result cache of memprof table (NOTE [ The result cache ])
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The result cache on, in a directory of its own."""
    directory = tmp_path / "cache"
    monkeypatch.delenv("MEMPROF_NO_CACHE", raising=False)
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(directory))
    return directory


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("table/*.json"))


def test_cached_table_is_the_same_bytes_and_starts_without_torch(cache, tmp_path):
    args = ("table", "vgg19", "--batch-size", "4")
    first, out, imported = run_memprof(*args)
    assert first.returncode == 0, first.stderr
    assert "torch" in imported and len(entries(cache)) == 1
    second, again, imported = run_memprof(*args)
    assert second.returncode == 0 and second.stderr == ""
    assert again == out
    assert not imported, imported  # neither torch nor pandas
    target = tmp_path / "table.txt"
    written, _, imported = run_memprof(*args, "--out", str(target))
    assert written.returncode == 0 and not imported
    assert target.read_text(encoding="utf-8") == out
    assert written.stderr.strip() == f"wrote {target}"
    bypassed, fresh, imported = run_memprof(*args, "--no-cache")
    assert bypassed.returncode == 0 and fresh == out and "torch" in imported


def test_no_cache_flag_and_variable_neither_read_nor_write(cache, monkeypatch, capsys):
    from memprof.cli import main

    assert main(["table", "vgg19", "--batch-size", "2", "--no-cache"]) == 0
    assert entries(cache) == []
    monkeypatch.setenv("MEMPROF_NO_CACHE", "1")
    assert main(["table", "vgg19", "--batch-size", "2"]) == 0
    assert entries(cache) == []
    monkeypatch.setenv("MEMPROF_NO_CACHE", "0")
    assert main(["table", "vgg19", "--batch-size", "2"]) == 0
    assert len(entries(cache)) == 1


def _key(argv: list[str]) -> str | None:
    from memprof.cache import cache_key, entry_name
    from memprof.cli import build_parser
    from memprof.cli._common import model_options
    from memprof.cli.table import _resolve_builtin

    args = build_parser(argv).parse_args(argv)
    resolved = _resolve_builtin(args, args.format, model_options(args))
    return None if resolved is None or resolved["device"] != "meta" else entry_name(cache_key("table", resolved))


def test_the_key_changes_with_every_argument(cache, monkeypatch):
    from memprof import cache as _cache

    base = ["table", "vgg19"]
    variants = [
        ["table", "revvgg"], [*base, "--batch-size", "64"], [*base, "--dtype", "bfloat16"], [*base, "--depth", "1"],
        [*base, "--input-shape", "3,64,64"], [*base, "--format", "csv"], [*base, "--all-rows"],
        [*base, "--seed-table"], ["table", "revvgg", "--model-option", "reversible=false"],
        ["table", "revvit", "--model-option", "depth=6"], ["table", "revvit", "--model-option", "depth=7"],
    ]
    keys = [_key(base)] + [_key(v) for v in variants]
    assert None not in keys and len(set(keys)) == len(keys), keys
    assert _key(base) == _key([*base, "--batch-size", "128"])  # the default, spelled out
    assert _key([*base, "--device", "cpu"]) is None  # a real pass is never cached
    assert _key(["table", "tests.test_table:TinyNet", "--input-shape", "3,8,8"]) is None  # nor the user's code
    monkeypatch.setattr(_cache, "_version", lambda package: "0.0-other")  # another torch
    assert _key(base) != keys[0]
    monkeypatch.undo()
    monkeypatch.setattr(_cache, "_ENTRY_FORMAT", 0)  # another layout
    assert _key(base) != keys[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-key", "not-utf8"])
def test_a_corrupt_entry_is_recomputed(cache, damage, capsys):
    from memprof.cli import main

    argv = ["table", "vgg19", "--batch-size", "2", "--format", "csv"]
    assert main(argv) == 0
    expected = capsys.readouterr().out
    (entry,) = entries(cache)
    text = entry.read_text(encoding="utf-8")
    if damage == "garbage":
        entry.write_text("{not json", encoding="utf-8")
    elif damage == "truncated":
        entry.write_text(text[: len(text) // 2], encoding="utf-8")
    elif damage == "other-key":
        doc = json.loads(text)
        doc["key"]["arguments"]["batch_size"] = 3
        doc["output"] = "wrong\n"
        entry.write_text(json.dumps(doc), encoding="utf-8")
    else:
        entry.write_bytes(b"\xff\xfe" + text.encode())
    assert main(argv) == 0
    assert capsys.readouterr().out == expected
    assert json.loads(entry.read_text(encoding="utf-8"))["output"] == expected  # rewritten whole


def test_an_unusable_cache_directory_is_skipped(cache, monkeypatch, tmp_path, capsys):
    from memprof.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(blocker / "cache"))
    assert main(["table", "vgg19", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("memprof table vgg19") and captured.err == ""


def test_cache_directory_defaults(monkeypatch, tmp_path):
    from memprof.cache import cache_dir

    monkeypatch.delenv("MEMPROF_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "memprof"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "memprof"


# ------------------------------------------------------------------------------------------------
# The entries shipped in the package, and the dependencies an entry records (NOTE [ The result cache ])
# ------------------------------------------------------------------------------------------------


def _shipped_for_these_versions() -> None:
    """Skip unless the shipped entries were computed with the torch, NumPy, pandas, tabulate and Python here."""
    from memprof.cache import SHIPPED_DIR, cache_key, read_entry

    here = {k: v for k, v in cache_key("table", {}).items() if k != "arguments"}
    entry = read_entry(next(SHIPPED_DIR.glob("table/vgg19.text.*.json")))
    there = {k: v for k, v in entry["key"].items() if k != "arguments"}
    if there != here:
        pytest.skip(f"the shipped entries are for {there}, not {here}: they miss here, by design")


def test_first_table_on_a_fresh_clone_comes_from_the_shipped_entries(cache, capsys):
    """An empty user cache: memprof table vgg19 starts without torch and prints what --no-cache computes."""
    from memprof.cli import main

    _shipped_for_these_versions()

    proc, out, imported = run_memprof("table", "vgg19")
    assert proc.returncode == 0 and proc.stderr == ""
    assert not imported, f"{imported}: the shipped entry missed (stale? run `memprof report tables`)"
    assert entries(cache) == []  # a shipped hit writes nothing
    assert main(["table", "vgg19", "--no-cache"]) == 0
    assert out == capsys.readouterr().out


def _copy_package(tmp_path: Path) -> Path:
    """A copy of the checkout's package without bytecode, as a fresh clone has it; returns its root."""
    import shutil

    root = tmp_path / "clone"
    shutil.copytree(ROOT / "memprof", root / "memprof", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _run_in(root: Path, cache_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], str, set[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEMPROF_NO_CACHE", "PYTHONPATH")}
    env.update(MEMPROF_CACHE_DIR=str(cache_dir), OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=root, capture_output=True, text=True,
                          check=False, timeout=900)
    out, _, last = proc.stdout.rpartition("\nIMPORTED ")
    return proc, out, set(filter(None, last.strip().split(",")))


def test_an_edited_dependency_misses_and_another_file_does_not(tmp_path):
    """Editing a module the table imported makes the shipped entry a miss; editing one it never imported does not."""
    _shipped_for_these_versions()
    root = _copy_package(tmp_path)
    with (root / "memprof" / "train" / "loop.py").open("a", encoding="utf-8") as f:  # not imported by table
        f.write("\n# an edit\n")
    proc, expected, imported = _run_in(root, tmp_path / "c1", "table", "revvgg", "--format", "csv")
    assert proc.returncode == 0 and not imported, (proc.stderr, imported, "stale? run `memprof report tables`")
    with (root / "memprof" / "rendering" / "layer_table.py").open("a", encoding="utf-8") as f:
        f.write("\n# an edit\n")
    proc, out, imported = _run_in(root, tmp_path / "c2", "table", "revvgg", "--format", "csv")
    assert proc.returncode == 0 and "torch" in imported, proc.stderr  # computed
    assert out == expected
    (written,) = (tmp_path / "c2").glob("table/*.json")  # and cached with the edited file's hash
    doc = json.loads(written.read_text(encoding="utf-8"))
    edited = (root / "memprof" / "rendering" / "layer_table.py").read_bytes()
    import hashlib

    assert doc["depends"]["rendering/layer_table.py"] == hashlib.sha256(edited).hexdigest()
    assert "train/loop.py" not in doc["depends"] and "cli/table.py" in doc["depends"]


def test_an_entry_whose_dependency_changed_is_a_miss(cache, monkeypatch, capsys):
    from memprof import cache as result_cache
    from memprof.cli import main

    argv = ["table", "vgg19", "--batch-size", "2", "--format", "csv"]
    assert main(argv) == 0
    expected = capsys.readouterr().out
    (entry,) = entries(cache)
    doc = json.loads(entry.read_text(encoding="utf-8"))
    assert "rendering/layer_table.py" in doc["depends"] and "cache.py" in doc["depends"]
    key = doc["key"]
    assert result_cache.read_cached(key) == expected
    for damage in ({"rendering/layer_table.py": "0" * 64}, {"no/such/module.py": "0" * 64}, None):
        changed = dict(doc, depends=None if damage is None else {**doc["depends"], **damage})
        entry.write_text(json.dumps(changed), encoding="utf-8")
        assert result_cache.read_cached(key, shipped=False) is None, damage


def test_dependencies_are_the_imported_memprof_modules():
    from memprof.cache import PACKAGE_DIR, record_dependencies

    depends = record_dependencies()
    assert depends is not None and "cache.py" in depends and "__init__.py" in depends
    assert all((PACKAGE_DIR / p).is_file() and p.endswith(".py") for p in depends)
    assert set(depends) == {Path(m.__file__).resolve().relative_to(PACKAGE_DIR).as_posix()
                            for n, m in sys.modules.items() if n == "memprof" or n.startswith("memprof.")}


def test_the_package_reads_no_data_files():
    """The dependencies of an entry are .py files: a data file in the package would need a hash too."""
    package = ROOT / "memprof"
    other = [p.relative_to(package).as_posix() for p in package.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"
             and p.name != "py.typed" and not (p.parts[-3] == "shipped_cache" and p.suffix == ".json")]
    assert not other, f"data files in the package (NOTE [ The result cache ] in memprof/cache.py): {other}"


def test_shipped_entries_are_package_data():
    """setup.cfg and MANIFEST.in carry memprof/shipped_cache/ into an install."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert "shipped_cache/*/*.json" in config["options.package_data"]["memprof"]
    assert "recursive-include memprof/shipped_cache *.json" in (ROOT / "MANIFEST.in").read_text()
