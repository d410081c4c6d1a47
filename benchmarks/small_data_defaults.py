"""The data-aware training defaults on a small image folder that no test uses: `convscope train --model
convnext_atto --data DIR --epochs 10` with no other flag, on a 10-class, 8,000-image, 28x28 grayscale folder.

The folder is written as PNGs from Fashion-MNIST's test split, images 2,000 to 9,999 (the tests use the first
few hundred test images only; the training split is the demo's), into a temporary directory. The run holds out
10% of it (800 images) and reports top-1 on those. Target: >= 90% top-1 in under 10 minutes on 2 cores.

    PYTHONPATH=src python benchmarks/small_data_defaults.py [--epochs 10] [--threads N] [--out PAGE.md] [-- FLAGS]

Extra flags after `--` are passed to `convscope train` (for trials of other settings).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST, COUNT = 2000, 8000


# Where the folder's images come from: the benchmark's own (test images 2,000-9,999, which no test uses), or, to
# see how much the images themselves decide, the first 8,000 training images (the demo trains on those).
SOURCES = {"test": ("test", FIRST), "train": ("train", 0)}


def write_folder(root: Path, source: str = "test") -> None:
    from PIL import Image

    from convscope.data import fashion_mnist
    from convscope.data.datasets import FASHION_MNIST_CLASSES

    split, first = SOURCES[source]
    images = fashion_mnist(split=split)
    for i in range(first, first + COUNT):
        d = root / FASHION_MNIST_CLASSES[int(images.labels[i])].replace("/", "-")
        d.mkdir(exist_ok=True)
        Image.fromarray(images.images[i, 0].numpy()).save(d / f"{i:05d}.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: convscope's)")
    ap.add_argument("--out", default=None, help="write the result page here (markdown)")
    ap.add_argument("flags", nargs="*", help="extra `convscope train` flags (after --)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import cpu_name, load_average

    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        data.mkdir()
        write_folder(data)
        cmd = [sys.executable, "-m", "convscope", "train", "--model", "convnext_atto", "--data", str(data),
               "--epochs", str(args.epochs), "--out", str(run), "--progress", "plain"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        cmd += args.flags
        load_before = load_average()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        wall = time.perf_counter() - t0
        print(proc.stdout, end="")
        print(proc.stderr, end="", file=sys.stderr)
        if proc.returncode != 0:
            return proc.returncode
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = history[-1]
    shown = " ".join(c if c != str(data) else "DIR" for c in cmd[4:]).replace(str(run), "RUN")
    chosen = next((line for line in proc.stdout.splitlines() if line.startswith("data-aware defaults")), "")
    page = "\n".join([
        "# Data-aware defaults on a small image folder",
        "",
        f"`convscope train {shown}` on a 10-class folder of {COUNT:,} 28x28 grayscale PNGs (Fashion-MNIST test images "
        f"{FIRST:,}-{FIRST + COUNT - 1:,}, used by no test); 10% held out for evaluation.",
        "",
        "Reproduce: `PYTHONPATH=src python benchmarks/small_data_defaults.py "
        f"{f'--threads {args.threads} ' if args.threads else ''}--out benchmarks/results/small_data_defaults.md`",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores; load average before {load_before}, after "
        f"{load_average()} (1/5/15 min).",
        "",
        f"The run printed: `{chosen}`" if chosen else "",
        "",
        "| epoch | train loss | top-1 | img/s | epoch time (s) |",
        "|---|---|---|---|---|",
        *[f"| {h['epoch']} | {h['train_loss']:.4f} | {h.get('top1', float('nan')):.2f}% | "
          f"{h['train_img_per_s']:.0f} | {h['epoch_time_s']:.1f} |" for h in history],
        "",
        f"Result: top-1 {last['top1']:.2f}% (target >= 90%), wall clock {wall / 60:.1f} min (target < 10 min).",
        "",
    ])
    print(page)
    if args.out:
        Path(args.out).write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
