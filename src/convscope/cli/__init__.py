"""The `convscope` command. Thin: it parses arguments, calls the library and prints.

One module per command group (`models`: list/info; `lab`: hw/profile/compare; `train`: train/eval/predict;
`deploy`: optimize/prune/deploy; `bench`: bench-mixers; `explain`: explain/erf/probe; `weights`: weights
list/download/import/verify and export-hub; `data`: data pack), each with an `add_commands(add)` that declares its
commands' options once; the values are parsed by `values` with one set of limits. Errors a user can fix (unknown
model, bad file, bad value) print one line and exit with status 2, before any work.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from . import atlas, bench, data, deploy, explain, lab, models, pretrain, train, weights

Command = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (exit status 2) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # argparse drops a value of "--" given as `--flag=--` and leaves the flag an empty list
        for a in args or ():
            if isinstance(a, str) and a.startswith("--") and a.endswith("=--"):
                self.error(f"argument {a.split('=', 1)[0]}: expected a value; got '--'")
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The `convscope` parser: every command group's commands."""
    p = _Parser(prog="convscope", description="Modern ConvNets: model zoo, efficiency lab, "
                                "training and deployment.")
    p.add_argument("--version", action="version", version=f"convscope {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(name: str, fn: Command, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    for group in (models, lab, train, pretrain, bench, atlas, deploy, explain, weights, data):
        group.add_commands(add)
    return p


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `convscope` command with `argv` (default: the process's arguments); the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:   # --help, --version (0) and usage errors (2), already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from ..train.callbacks import TrainingDiverged
    try:
        return int(args.func(args) or 0)
    except TrainingDiverged as e:
        print(f"convscope: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"convscope: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
