"""`convscope data pack`: an image folder or Fashion-MNIST packed into webdataset-layout tar shards
(convscope.data.shards), which `--data DIR` then reads like the folder, batch for batch."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from . import values


def _cmd_pack(args: argparse.Namespace) -> int:
    from ..data.datasets import print_warning
    from ..data.shards import pack_shards, read_index

    out = pack_shards(args.source, args.out, args.shard_size, check=args.check_images, report=print_warning)
    for name, entry in read_index(out)["splits"].items():
        print(f"{name}: {len(entry['samples']):,} images in {len(entry['shards'])} shard(s)")
    print(f"wrote {out} (train with --data {out})")
    return 0


def _shard_size(text: str):
    from ..data.shards import shard_size

    try:
        return shard_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """data (pack)."""
    sp = add("data", None, "data sets: pack an image folder or Fashion-MNIST into tar shards")
    sub = sp.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=type(sp))
    p = sub.add_parser("pack", help="write tar shards (webdataset's layout) and their index.json",
                       description="write an image folder (root/<class>/<images>, or its train/ and val/: one "
                                   "shard set per split) or Fashion-MNIST as tar shards with an index.json; "
                                   "convscope train --data DIR reads them as it reads the folder")
    p.set_defaults(func=_cmd_pack)
    p.add_argument("source", type=values.data_source, metavar="SOURCE",
                   help="an image folder, fashion-mnist or a directory of Fashion-MNIST idx files")
    p.add_argument("--out", required=True, help="the directory to create (absent or empty)")
    p.add_argument("--shard-size", type=_shard_size, default="1000", metavar="N|SIZE",
                   help="images per shard (N), or bytes per shard (e.g. 256MB); default 1000")
    p.add_argument("--check-images", choices=("none", "header", "decode"), default="header",
                   help="how the folder's files are checked first; unreadable ones are reported and left out")
