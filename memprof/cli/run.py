"""`memprof run SCRIPT [ARGS...]`: run a training script under ``memprof.track()`` and report its steps.

Like ``python -m cProfile`` or ``memray run``: the script runs as ``__main__`` with
``sys.argv == [SCRIPT, *ARGS]`` and its own directory first on ``sys.path``, as ``python
SCRIPT ARGS`` would run it; memprof exits with the script's own exit status. A script that
raises shows its traceback (without memprof's frames) and the report of the steps completed.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

FORMATS = ("text", "markdown", "json")
MODES = ("fast", "fine")

#: one line for ``memprof --help`` (read without building this verb's parser)
HELP = "run a training script and report the memory of every step (memprof.track())"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help=HELP,
        description="Run SCRIPT as python would (sys.argv, __main__, its directory on sys.path) under "
        "memprof.track(): a step ends at each optimizer.step(). Prints the table of all steps and the "
        "steady-state (last) step's report after the script ends, and exits with the script's exit "
        "status. Options go before SCRIPT; everything after SCRIPT is passed to it.",
    )
    p.add_argument("--steps", default=None, metavar="N",
                   help="stop the script cleanly after N optimizer steps (default: let it finish)")
    p.add_argument("--format", default="text", help=f"{', '.join(FORMATS)} (default: text)")
    p.add_argument("--timeline", default=None, metavar="PATH.png",
                   help="write the steady-state step's timeline of live bytes by category (default: none)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="write the report there instead of stdout, apart from the script's own output "
                   "(default: stdout, after the script's output)")
    p.add_argument("--mode", default="fast",
                   help="fast (allocator events and hooks, ~1 us per op) or fine (adds a per-op dispatch "
                   "mode that tells kernel workspaces from temporaries) (default: fast)")
    p.add_argument("--device", default="cpu", help="the allocator read: cpu or cuda[:N] (default: cpu)")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> tuple[Path, int | None]:
    """Every argument check before the script starts."""
    from ..validation import UsageError, check_choice, check_positive_int

    check_choice("format", args.format, FORMATS)
    check_choice("mode", args.mode, MODES)
    steps = check_positive_int("--steps", args.steps) if args.steps is not None else None
    if args.timeline is not None and not str(args.timeline).lower().endswith(".png"):
        raise UsageError(f"--timeline {args.timeline!r} must name a .png file")
    script = Path(args.script)
    if not script.exists():
        raise UsageError(f"script {args.script!r} not found")
    if not script.is_file():
        raise UsageError(f"script {args.script!r} is not a file")
    return script.resolve(), steps


def _print_traceback(exc: BaseException, script: Path) -> None:
    """The script's traceback, starting at its own first frame (memprof's frames left out)."""
    tb = exc.__traceback__
    first = tb
    while first is not None and Path(first.tb_frame.f_code.co_filename).resolve() != script:
        first = first.tb_next
    exc = exc.with_traceback(first or tb)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def _exit_status(exc: SystemExit) -> int:
    code: Any = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # as python does for sys.exit("message")
    return 1


def run(args: argparse.Namespace) -> int:
    script, steps = _check(args)  # before torch is imported (NOTE [ Starting without torch ])
    from ..api.track import track
    from ..recording.session import StopRecording

    argv, path0 = list(sys.argv), list(sys.path)
    sys.argv = [str(args.script), *args.args]
    sys.path.insert(0, str(script.parent))
    status = 0
    stopped = False
    rec = None
    try:
        with track(mode=args.mode, device=args.device, max_steps=steps) as rec:
            runpy.run_path(str(script), run_name="__main__")
    except StopRecording:
        stopped = True
    except SystemExit as exc:
        status = _exit_status(exc)
    except KeyboardInterrupt:
        print("memprof run: interrupted", file=sys.stderr)
        status = 130
    except BaseException as exc:  # the script's own error: show it as python would
        _print_traceback(exc, script)
        status = 1
    finally:
        sys.argv, sys.path[:] = argv, path0
    sys.stdout.flush()
    if rec is None:  # track() itself refused to start
        return 2
    if stopped:
        rec.notes.append(f"stopped after {steps} steps (--steps)")
    _report(rec, args, script, status)
    if rec.no_optimizer_step:
        print(f"memprof run: error: {args.script} never called optimizer.step(): the report covers the "
              "whole run as one step", file=sys.stderr)
        return status or 2
    return status


def _report(rec: Any, args: argparse.Namespace, script: Path, status: int) -> None:
    from ._common import write_output

    if args.format == "json":
        from ..rendering.tables import render_json

        doc = {"script": str(args.script), "args": list(args.args), "exit_status": status, **rec.to_dict()}
        text = render_json(doc)
    elif args.format == "markdown":
        text = rec.to_markdown()
    else:
        text = rec.to_text()
    write_output(text, args.out)
    sys.stdout.flush()
    if args.timeline is not None and rec.steps:
        rec.steady_state.plot(args.timeline)
        print(f"wrote {args.timeline}", file=sys.stderr)
