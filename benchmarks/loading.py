"""Loading images: an image folder of PNG files against the same images packed as tar shards (`convscope data pack`).

Generates --images 28x28 grayscale PNGs from Fashion-MNIST's training set, tiled deterministically (image i is
training image i mod 60,000, mirrored left-right in every odd pass over the set), into WORK/folder/<class>/, packs
them with `convscope data pack` into WORK/shards/, then measures images/s through the real batch loader
(`convscope.data.Loader`: shuffled, decoded with PIL at --load-size, the training transform) for the folder and
the shards with 0, 1 and 2 worker processes: the median of --passes passes of --batches batches each, the first
batch of a pass (worker start-up) not counted; folder and shards alternate. Decoded images are not cached (the
rate is the decode path's).

    PYTHONPATH=src python benchmarks/loading.py [--images 100000] [--work DIR] [--passes 3] [--batches 20]

Writes benchmarks/results/loading.md (or --out) naming the machine and the command.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BATCH = 128


def generate(root: Path, n: int, data: str | None) -> None:
    """n Fashion-MNIST PNGs in root/<class index>_<class name>/, and root/.complete holding n when done."""
    import numpy as np
    from PIL import Image

    from convscope.data.datasets import fashion_mnist

    ds = fashion_mnist(data, "train")
    names = [f"{i}_{c.replace('/', '-').replace(' ', '-')}" for i, c in enumerate(ds.classes)]
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    images, labels = ds.images[:, 0].numpy(), ds.labels.tolist()
    for i in range(n):
        k = i % len(labels)
        arr = images[k] if (i // len(labels)) % 2 == 0 else np.ascontiguousarray(images[k][:, ::-1])
        Image.fromarray(arr).save(root / names[labels[k]] / f"{i:06d}.png")
    (root / ".complete").write_text(str(n))


def rate(make, batches: int) -> float:
    """Images/s of `batches` batches from a fresh loader, after its first batch."""
    it = iter(make())
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH / (time.perf_counter() - t0)


def measure(sources: dict[str, Path], workers: list[int], passes: int, batches: int, load_size: int) -> dict:
    """{(source, workers): [images/s per pass]}, the setups alternating within each pass."""
    import torch

    from convscope.data.loaders import Loader
    from convscope.data.open import open_dataset
    from convscope.data.transforms import TrainTransform

    torch.set_num_threads(1)
    tf = TrainTransform(load_size, (0.286,), (0.353,), scale=(0.6, 1.0))
    data = {k: open_dataset(p, load_size=load_size, in_chans=1, check="none").dataset for k, p in sources.items()}
    rates: dict = {(k, w): [] for w in workers for k in data}
    for p in range(passes):
        for (k, w), got in rates.items():
            got.append(rate(lambda k=k, w=w, p=p: Loader(data[k], tf, BATCH, train=True, seed=p, workers=w), batches))
        print(f"pass {p + 1}: " + ", ".join(f"{k} {w}w {v[-1]:.0f}" for (k, w), v in rates.items()), flush=True)
    return rates


def page(rates: dict, args: argparse.Namespace, timings: dict[str, str]) -> str:
    import torch
    from common import cpu_name, load_average

    machine = f"{cpu_name()}, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}"
    rows = "\n".join(f"| {k} | {w} | {statistics.median(v):,.0f} | {', '.join(f'{x:,.0f}' for x in v)} |"
                     for (k, w), v in rates.items())
    return f"""# Loading images: folder vs shards

`PYTHONPATH=src python benchmarks/loading.py {' '.join(sys.argv[1:])}`

Machine: {machine}. Load average at the end: {load_average()}.

{args.images:,} Fashion-MNIST PNGs (28x28, tiled from the training set), decoded at {args.load_size}x{args.load_size}
with the training transform, batches of {BATCH}; median of {args.passes} passes of {args.batches} batches (after
each pass's first batch). Generating the PNGs: {timings['generate']}; `convscope data pack`:
{timings['pack']}.

| source | workers | images/s (median) | passes |
|---|---|---|---|
{rows}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--work", default=None, metavar="DIR", help="where the folder and shards go (kept; default: "
                    "a temporary directory, removed)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--load-size", type=int, default=32)
    ap.add_argument("--shard-size", default="10000")
    ap.add_argument("--data", default=None, metavar="DIR", help="Fashion-MNIST idx files (default: Debian's)")
    ap.add_argument("--out", default=str(RESULTS / "loading.md"))
    args = ap.parse_args()
    args.batches = max(1, min(args.batches, args.images // BATCH - 1))   # a pass stays within one epoch
    from convscope.cli import main as convscope

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        timings = dict(generate="reused (--work)", pack="reused (--work)")
        t0 = time.perf_counter()
        done = work / "folder" / ".complete"
        if done.is_file() and done.read_text() != str(args.images):
            sys.exit(f"{work} holds {done.read_text()} generated images, not {args.images}: give another --work")
        if not done.is_file():
            generate(work / "folder", args.images, args.data)
            timings["generate"] = f"{time.perf_counter() - t0:.0f} s"
        if not (work / "shards" / "index.json").is_file():
            t0 = time.perf_counter()
            if convscope(["data", "pack", str(work / "folder"), "--out", str(work / "shards"), "--shard-size",
                          args.shard_size, "--check-images", "none"]) != 0:
                sys.exit(1)
            timings["pack"] = f"{time.perf_counter() - t0:.0f} s"
        rates = measure({"folder": work / "folder", "shards": work / "shards"},
                        [int(w) for w in args.workers.split(",")], args.passes, args.batches, args.load_size)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(page(rates, args, timings))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
