"""`memprof report`: regenerate everything under reports/."""

from __future__ import annotations

import argparse


#: one line for ``memprof --help`` (read without building this verb's parser)
HELP = ("regenerate every report under reports/ (default: all)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help=HELP)
    p.add_argument("names", nargs="*", help="reports to regenerate (default: all of them)")
    p.add_argument("--out", default="reports", help="output directory (default: reports)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..reports import generate_reports

    for path in generate_reports(args.out, args.names or None):
        print(f"wrote {path}")
    return 0
