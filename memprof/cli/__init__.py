"""The ``memprof`` command: a thin argparse layer over the library.

Every verb lives in its own module with ``add_parser(subparsers)``; the parser it adds sets
``func(args) -> int``. Errors raised by the library for bad input (ValueError, TypeError and
:class:`memprof.validation.UsageError`) become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import OutOfMemory, is_out_of_memory, out_of_memory
from ..validation import UsageError
from ..version import __version__
from ._quiet import filtered_stderr

__all__ = ["main", "VERBS"]

#: verb name -> module that defines it (in the order ``memprof --help`` lists them).
VERBS: dict[str, str] = {
    "table": "memprof.cli.table",
    "profile": "memprof.cli.profile",
    "fit": "memprof.cli.fit",
    "sweep": "memprof.cli.sweep",
    "compare": "memprof.cli.compare",
    "train": "memprof.cli.train",
    "report": "memprof.cli.report",
    "run": "memprof.cli.run",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit code 2.

    A value that starts with a minus and a digit (``--memory -5GiB``) is taken as a value, so
    that the option's own check says what is wrong with it; argparse alone takes only plain
    negative numbers, and calls ``-5GiB`` a missing argument. No memprof option starts with a digit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser: every verb of :data:`VERBS`; only the verb named in ``argv`` with all its options.

    Building a verb's options can import torch (model names, strategy names, the training
    defaults); ``memprof --help`` and another verb's run need none of that (NOTE [ Starting
    without torch ] in :mod:`memprof.vocabulary`). Without ``argv`` every verb is built in full.
    """
    parser = _Parser(
        prog="memprof",
        description="Where the memory of a PyTorch training step goes, layer by layer.",
    )
    parser.add_argument("--version", action="version", version=f"memprof {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    wanted = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)
        if wanted is None or verb == wanted:
            module.add_parser(sub)
        else:
            sub.add_parser(verb, help=module.HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    # NOTE [ Profiler chatter on stderr ]; train may start torchrun workers that share fd 2: left alone
    quiet = filtered_stderr() if args.verb != "train" else contextlib.nullcontext()
    try:
        with quiet:
            return int(args.func(args) or 0)
    except (UsageError, ValueError, TypeError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"memprof {args.verb}: error: {msg}", file=sys.stderr)
        return 2
    except (OutOfMemory, RuntimeError, MemoryError) as exc:  # NOTE [ Out of memory is a result ]
        if not is_out_of_memory(exc):
            raise
        batch = getattr(args, "batch_size", None)
        text = str(exc) if isinstance(exc, OutOfMemory) else str(out_of_memory(exc, int(batch) if batch else 0))
        print(f"memprof {args.verb}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memprof: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
