"""Prototype: let argparse take `--memory -5GiB` as a value so the real parse error is shown.

argparse treats any argument starting with '-' as an option unless it looks like a negative
*number* (its `_negative_number_matcher`, '-5' or '-.5'). '-5GiB' is neither, so argparse says
"expected one argument". Widening the matcher to anything starting with '-' and a digit makes
it a value; memprof's own parser then says why it is wrong. No memprof option starts with a digit.
"""
import argparse
import re


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


p = Parser(prog="memprof")
sub = p.add_subparsers(dest="verb", parser_class=Parser)
fit = sub.add_parser("fit")
fit.add_argument("model")
fit.add_argument("--memory", required=True)
print(p.parse_args(["fit", "vgg19", "--memory", "-5GiB"]))
print(p.parse_args(["fit", "vgg19", "--memory", "-5"]))
print(p.parse_args(["fit", "--memory", "-5GiB", "vgg19"]))
