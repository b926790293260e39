"""The ``memprof`` command: a thin argparse layer over the library.

Every verb lives in its own module with ``add_parser(subparsers)``; the parser it adds sets
``func(args) -> int``. Errors raised by the library for bad input (ValueError, TypeError and
:class:`memprof.validation.UsageError`) become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..validation import UsageError
from ..version import __version__

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
}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every verb of :data:`VERBS`."""
    parser = _Parser(
        prog="memprof",
        description="Where the memory of a PyTorch training step goes, layer by layer.",
    )
    parser.add_argument("--version", action="version", version=f"memprof {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for module_name in VERBS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"memprof {args.verb}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memprof: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
