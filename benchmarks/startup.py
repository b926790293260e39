"""How long memprof takes to start: each command in a fresh process, interleaved, CPU time.

Every round runs every command once, in turn (so load from other processes hits them all
alike), and records the child's CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)``)
and its wall time. The table gives the range over the rounds and the ratio of each command's
median CPU time to ``import torch`` in a fresh interpreter: a command under 1.0 does not pay
for torch.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: label -> argv (run with this checkout first on PYTHONPATH)
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "python -c 'import memprof'": [sys.executable, "-c", "import memprof"],
    "memprof --help": [sys.executable, "-m", "memprof", "--help"],
    "memprof profile --help": [sys.executable, "-m", "memprof", "profile", "--help"],
    "memprof profile vgg19 --format yaml (error)": [sys.executable, "-m", "memprof", "profile", "vgg19",
                                                    "--format", "yaml"],
    "memprof fit vgg19 --memory -5GiB (error)": [sys.executable, "-m", "memprof", "fit", "vgg19", "--memory",
                                                 "-5GiB"],
    "memprof table vgg19": [sys.executable, "-m", "memprof", "table", "vgg19"],
}
REFERENCE = "python -c 'import torch'"


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each running every command once (default: 5)")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cpu: dict[str, list[float]] = {k: [] for k in COMMANDS}
    wall: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.rounds):
        for label, command in COMMANDS.items():
            c, w = run_once(command, env)
            cpu[label].append(c)
            wall[label].append(w)
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
