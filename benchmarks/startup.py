"""How long memprof takes to start: each command in a fresh process, interleaved, CPU time.

Every round runs every command once, in turn (so load from other processes hits them all
alike), and records the child's CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)``)
and its wall time. The table gives the range over the rounds and the ratio of each command's
median CPU time to ``import torch`` in a fresh interpreter: a command under 1.0 does not pay
for torch.

``memprof table`` runs three ways: cold (``--no-cache``: records the forward, imports torch);
``vgg19`` on a fresh clone (a copy of the package without ``__pycache__``, made anew each
round, and an empty user cache: the entry shipped in ``memprof/shipped_cache/`` answers, and
Python compiles every module it imports, as on a first run); and ``vgg19 --batch-size 64``
from the user's cache, warmed once before the rounds in a temporary directory (NOTE [ The
result cache ] in ``memprof/cache.py``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEMPROF = [sys.executable, "-m", "memprof"]
VERBS = ("table", "profile", "fit", "sweep", "compare", "train", "report", "run")

#: label -> argv (run with this checkout first on PYTHONPATH)
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "python -c 'import memprof'": [sys.executable, "-c", "import memprof"],
    "memprof --help": [*MEMPROF, "--help"],
    **{f"memprof {verb} --help": [*MEMPROF, verb, "--help"] for verb in VERBS},
    "memprof profile vgg19 --format yaml (error)": [*MEMPROF, "profile", "vgg19", "--format", "yaml"],
    "memprof fit vgg19 --memory -5GiB (error)": [*MEMPROF, "fit", "vgg19", "--memory", "-5GiB"],
    "memprof table vgg19 --batch-size 0 (error)": [*MEMPROF, "table", "vgg19", "--batch-size", "0"],
    "memprof train --amp fp8 (error)": [*MEMPROF, "train", "--amp", "fp8"],
    "memprof train --epochs 0 (error)": [*MEMPROF, "train", "--epochs", "0"],
    "memprof train --model vit --model-option width=100 (error)": [*MEMPROF, "train", "--model", "vit",
                                                                   "--model-option", "width=100"],
    "memprof table vgg19 (cold: --no-cache)": [*MEMPROF, "table", "vgg19", "--no-cache"],
    "memprof table vgg19 (fresh clone: shipped)": [*MEMPROF, "table", "vgg19"],
    "memprof table vgg19 --batch-size 64 (user cache)": [*MEMPROF, "table", "vgg19", "--batch-size", "64"],
}
#: run from a fresh copy of the package with an empty user cache, made anew before each run
FRESH_CLONE = "memprof table vgg19 (fresh clone: shipped)"
#: warmed once before the rounds
USER_CACHE = "memprof table vgg19 --batch-size 64 (user cache)"
REFERENCE = "python -c 'import torch'"


def run_once(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each running every command once (default: 5)")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("MEMPROF_NO_CACHE", None)
    scratch = Path(tempfile.mkdtemp(prefix="memprof-startup-"))
    env["MEMPROF_CACHE_DIR"] = str(scratch / "cache")
    subprocess.run(COMMANDS[USER_CACHE], env=env, stdout=subprocess.DEVNULL, check=True)  # warm
    cpu: dict[str, list[float]] = {k: [] for k in COMMANDS}
    wall: dict[str, list[float]] = {k: [] for k in COMMANDS}
    try:
        for i in range(args.rounds):
            for label, command in COMMANDS.items():
                if label == FRESH_CLONE:
                    clone = scratch / f"clone{i}"
                    shutil.copytree(ROOT / "memprof", clone / "memprof", ignore=shutil.ignore_patterns("__pycache__"))
                    fresh = dict(env, PYTHONPATH=str(clone), MEMPROF_CACHE_DIR=str(clone / "empty-cache"))
                    c, w = run_once(command, fresh, cwd=clone)
                else:
                    c, w = run_once(command, env)
                cpu[label].append(c)
                wall[label].append(w)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ref = statistics.median(cpu[REFERENCE])
    width = max(map(len, COMMANDS))
    print(f"startup, {args.rounds} interleaved rounds, fresh process each; CPU = user + system of the child")
    print(f"{'command':<{width}}  {'CPU s (min-max)':>16}  {'wall s (min-max)':>17}  {'CPU / import torch':>18}")
    for label in COMMANDS:
        c, w = cpu[label], wall[label]
        print(f"{label:<{width}}  {min(c):7.2f}-{max(c):<7.2f}  {min(w):8.2f}-{max(w):<7.2f}  "
              f"{statistics.median(c) / ref:18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
