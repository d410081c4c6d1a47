"""Options several commands share, each declared once here with its parser from `values`."""
from __future__ import annotations

import argparse

from . import values


def add_batch(p: argparse.ArgumentParser, default: int = 1, help: str | None = None) -> None:
    p.add_argument("--batch", type=values.positive_int, default=default, help=help)


def add_size(p: argparse.ArgumentParser, default_from: str) -> None:
    p.add_argument("--size", type=values.input_size, default=None,
                   help=f"input size, 224 or HxW (default: {default_from})")


def add_threads(p: argparse.ArgumentParser, help: str | None = "torch intra-op threads (default: torch's)") -> None:
    p.add_argument("--threads", type=values.threads, default=None, help=help)


def add_repeats(p: argparse.ArgumentParser, default: int, help: str = "timed runs (medians are reported)") -> None:
    p.add_argument("--repeats", type=values.positive_int, default=default, help=help)


def add_checkpoint_device_json(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--checkpoint, --device and --json of the commands that run a trained model (`required`: --checkpoint
    must be on the command line; a command that reads it from --config checks it itself)."""
    p.add_argument("--checkpoint", required=required, default=None,
                   help="weights file written by train (or its run directory)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true")


class Only:
    """An argument group (or parser) that takes only the options whose first flag is in `flags` (`keep`), or only
    those whose first flag is not (`keep=False`): how one command shares the option declarations of another (e.g.
    `convscope pretrain` those of `convscope train`)."""

    def __init__(self, group: argparse._ActionsContainer, flags: set[str] | frozenset[str], keep: bool = True) -> None:
        self.group, self.flags, self.keep = group, flags, keep

    def add_argument(self, *names: str, **kwargs) -> argparse.Action | None:
        return self.group.add_argument(*names, **kwargs) if (names[0] in self.flags) == self.keep else None
