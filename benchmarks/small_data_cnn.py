"""What a small plain CNN reaches on the small-data benchmark's folder: the yardstick for the >= 90% target of
`small_data_defaults.py`.

The same 10-class folder of 8,000 28x28 grayscale PNGs (Fashion-MNIST test images 2,000-9,999, written by
small_data_defaults.write_folder), read through convscope's ImageFolder, split as `convscope train` splits it
(convscope.data.datasets.split_indices, 10% held out, seed 0), and a textbook CNN trained on it at 28x28 with
Adam (lr 1e-3, batch 64) for 10 epochs, no augmentation: conv3x3(32)-BN-ReLU-maxpool, conv3x3(64)-BN-ReLU-maxpool,
then either a 128-unit fully connected layer ("fc head") or a third conv3x3(128)-BN-ReLU and global average
pooling ("gap head"). Top-1 on the 800 held-out images after every epoch, for several seeds.

    PYTHONPATH=src python benchmarks/small_data_cnn.py [--seeds 0,1,2] [--epochs 10] [--source test|train]
        [--out PAGE.md]

`--source train` writes the folder from Fashion-MNIST's first 8,000 training images instead, to see how much the
images and the held-out split themselves decide.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(head: str):
    from torch import nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    trunk = [*block(1, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2)]
    if head == "fc":
        return nn.Sequential(*trunk, nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(*trunk, *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def run(images, labels, train_idx, val_idx, head: str, seed: int, epochs: int) -> list[float]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    net = build(head)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    accs = []
    for _ in range(epochs):
        net.train()
        order = train_idx[torch.randperm(len(train_idx))]
        for i in range(0, len(order), 64):
            b = order[i:i + 64]
            loss = F.cross_entropy(net(images[b]), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            accs.append(100 * (net(images[val_idx]).argmax(1) == labels[val_idx]).float().mean().item())
    return accs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--source", choices=("test", "train"), default="test",
                    help="the folder's images: test images 2,000-9,999 (the benchmark's) or training images 0-7,999")
    ap.add_argument("--out", default=None, help="write the result page here (markdown)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from common import cpu_name, load_average
    from small_data_defaults import write_folder

    from convscope.data.datasets import ImageFolder, split_indices

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        write_folder(data, args.source)
        folder = ImageFolder(data, load_size=28, mode="L")
        items = [folder[i] for i in range(len(folder))]
    images = torch.stack([im for im, _ in items]).float().div(255)
    labels = torch.tensor([lab for _, lab in items])
    tr, va = split_indices(len(items), 0.1, 0)
    tr, va = torch.tensor(tr), torch.tensor(va)
    t0 = time.perf_counter()
    results = {(h, s): run(images, labels, tr, va, h, s, args.epochs) for h in ("fc", "gap") for s in seeds}
    wall = time.perf_counter() - t0
    lines = ["# A plain CNN on the small-data folder", "",
             f"`PYTHONPATH=src python benchmarks/small_data_cnn.py --seeds {args.seeds} --epochs {args.epochs}"
             + (f" --source {args.source}`" if args.source != "test" else "`"), "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             *(["Here the folder holds Fashion-MNIST's training images 0-7,999 instead (`--source train`).", ""]
               if args.source == "train" else []),
             f"Machine: {cpu_name()}, 1 torch thread, torch {torch.__version__}; load average {load_average()}; "
             f"{wall:.0f} s for all runs.", "",
             "| head | seed | " + " | ".join(f"ep {e + 1}" for e in range(args.epochs)) + " | best | last |",
             "|---|---|" + "---:|" * (args.epochs + 2)]
    for (h, s), accs in results.items():
        cells = " | ".join(f"{a:.2f}" for a in accs)
        lines.append(f"| {h} | {s} | {cells} | {max(accs):.2f} | {accs[-1]:.2f} |")
    for h in ("fc", "gap"):
        last = [results[(h, s)][-1] for s in seeds]
        best = [max(results[(h, s)]) for s in seeds]
        lines.append("")
        lines.append(f"{h} head: last-epoch top-1 median {statistics.median(last):.2f}% (range {min(last):.2f}-"
                     f"{max(last):.2f}); best epoch median {statistics.median(best):.2f}%.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
