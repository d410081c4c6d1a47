"""Transfer on Fashion-MNIST: convnext_atto pretrained on classes 0-4, then fine-tuned on classes 5-9 with 20, 100
and 1,000 training images per class (`convscope train --pretrained`, with and without `--layer-decay`), against the
same runs from scratch, over three seeds.

1. Pretraining: convnext_atto on the training images of classes 0-4 (up to 6,000 per class), evaluated on their test
   images; its best weights less the classifier are the "release" (a file without classifier, as DINOv3's ConvNeXts
   are published: fine-tuning starts from a fresh classifier).
2. Fine-tuning: for each size n and seed, n training images of each of classes 5-9 drawn with that seed, every run the
   same number of optimizer steps (epochs = steps x batch / (5 n), rounded up), evaluated once at the end on the test
   images of classes 5-9. Arms: scratch; --pretrained RELEASE; --pretrained RELEASE --layer-decay D
   --head-lr-scale S. The seed also seeds the run.

    PYTHONPATH=src python benchmarks/transfer.py [--sizes 20,100,1000] [--seeds 0,1,2] [--threads 2]
        [--out benchmarks/results/transfer]      # writes transfer.md and transfer.json

Expected time on the 2-core CPU of the other result pages (~600 training images/s for convnext_atto at the 64x64
input the data-aware defaults choose): pretraining ~5 min (5 epochs of 30,000 images), each fine-tuning run ~25 s
(300 steps of 32 images, one evaluation of 5,000 images, start-up), 27 runs ~11 min; with the PNG folders ~20 min.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
ARMS = ("scratch", "pretrained", "pretrained + layer decay")


def _ints(s: str) -> list[int]:
    try:
        values = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {s!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers; got {s!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=_ints, default=[20, 100, 1000], help="training images per class when fine-tuning")
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("--pretrain-per-class", type=int, default=6000, help="training images per class (at most 6,000)")
    ap.add_argument("--finetune-steps", type=int, default=300, help="optimizer steps of every fine-tuning run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of every run")
    ap.add_argument("--layer-decay", type=float, default=0.75)
    ap.add_argument("--head-lr-scale", type=float, default=10.0)
    ap.add_argument("--eval-per-class", type=int, default=1000, help="test images per class (at most 1,000)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = ap.parse_args(argv)
    if not 0 < args.layer_decay <= 1:
        ap.error(f"--layer-decay must be in (0, 1]; got {args.layer_decay}")
    return args


def write_split(root: Path, split: str, classes: tuple[int, ...], per_class: int, seed: int | None) -> None:
    """PNGs of `per_class` images of each class of Fashion-MNIST's `split` in root/<class name>/ (the first ones,
    or drawn with `seed`)."""
    import torch
    from PIL import Image

    from convscope.data import fashion_mnist
    from convscope.data.datasets import FASHION_MNIST_CLASSES

    data = fashion_mnist(split=split)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    for c in classes:
        idx = (data.labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)] if g is not None else idx
        d = root / FASHION_MNIST_CLASSES[c].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        for i in idx[:per_class].tolist():
            Image.fromarray(data.images[i, 0].numpy()).save(d / f"{i:05d}.png")


def link_tree(src: Path, dst: Path) -> None:
    """`dst` with a hard link to every file of `src` (the shared evaluation images, written once)."""
    for f in src.rglob("*.png"):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, target)


def run(args: argparse.Namespace, data: Path, out: Path, seed: int, epochs: int, **extra) -> dict:
    """One `convscope train` run (in process); its final top-1 and wall time."""
    from convscope.train import TrainConfig, train

    cfg = TrainConfig(model="convnext_atto", data=str(data), out=str(out), epochs=epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=seed, eval_every=epochs, threads=args.threads, progress="none", quiet=True,
                      **extra)
    t0 = time.perf_counter()
    train(cfg)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return dict(top1=history[-1]["top1"], seconds=round(time.perf_counter() - t0, 1), epochs=epochs)


def pretrain(args: argparse.Namespace, tmp: Path) -> tuple[Path, dict]:
    """The pretraining run on classes 0-4 and its weights less the classifier (the release)."""
    from convscope.models import read_state_dict, save_weights

    root = tmp / "source"
    write_split(root / "train", "train", SOURCE, args.pretrain_per_class, None)
    write_split(root / "val", "test", SOURCE, args.eval_per_class, None)
    record = run(args, root, tmp / "pretrain", 0, args.pretrain_epochs)
    sd = read_state_dict(tmp / "pretrain" / "best.safetensors")
    release = save_weights({k: v for k, v in sd.items() if not k.startswith("head.fc.")}, tmp / "release.safetensors")
    return release, record


def finetune(args: argparse.Namespace, tmp: Path, release: Path) -> list[dict]:
    """Every (size, seed, arm) fine-tuning run on classes 5-9."""
    val = tmp / "target_val"
    write_split(val, "test", TARGET, args.eval_per_class, None)
    arms = {"scratch": {}, "pretrained": dict(pretrained=str(release)),
            "pretrained + layer decay": dict(pretrained=str(release), layer_decay=args.layer_decay,
                                             head_lr_scale=args.head_lr_scale)}
    rows = []
    for n in args.sizes:
        epochs = math.ceil(args.finetune_steps * args.batch_size / (len(TARGET) * n))
        for seed in args.seeds:
            root = tmp / f"target_{n}_{seed}"
            write_split(root / "train", "train", TARGET, n, seed)
            link_tree(val, root / "val")
            for arm, extra in arms.items():
                record = run(args, root, tmp / f"run_{n}_{seed}_{len(rows)}", seed, epochs, **extra)
                rows.append(dict(per_class=n, seed=seed, arm=arm, **record))
                print(f"{n:5d}/class seed {seed} {arm:26s} top-1 {record['top1']:6.2f}%  {record['seconds']:.0f} s",
                      flush=True)
    return rows


def page(args: argparse.Namespace, pre: dict, rows: list[dict], wall: float, machine: str) -> str:
    """The result page: mean and spread of the final top-1 per size and arm."""
    import statistics

    lines = ["# Transfer: Fashion-MNIST classes 0-4 -> 5-9", "",
             "convnext_atto pretrained on classes 0-4, fine-tuned on 5-9 with n images per class "
             f"(`convscope train --pretrained`, layer decay {args.layer_decay} with head lr x{args.head_lr_scale}) "
             f"vs from scratch; {args.finetune_steps} steps of {args.batch_size} images, lr {args.lr}, seeds "
             f"{', '.join(map(str, args.seeds))}; top-1 on {args.eval_per_class} test images per class.", "",
             f"Reproduce: `PYTHONPATH=src python benchmarks/transfer.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine}; wall clock {wall / 60:.1f} min. Pretraining: {args.pretrain_epochs} epochs, "
             f"top-1 {pre['top1']:.2f}% on classes 0-4, {pre['seconds']:.0f} s.", "",
             "| images per class | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for n in args.sizes:
        cells = []
        for arm in ARMS:
            top1 = [r["top1"] for r in rows if r["per_class"] == n and r["arm"] == arm]
            spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
            cells.append(f"{statistics.mean(top1):.2f} +- {spread:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Top-1 in %, mean +- standard deviation over the seeds.", ""]
    return "\n".join(lines + gains(args, rows))


def gains(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    """Each pretrained arm against scratch, seed by seed (same seed: same images drawn, same run seed): the
    paired gain's mean and range, scratch's standard deviation over the seeds (the spread the gain has to exceed)
    and whether every seed of the arm is above every seed of scratch."""
    import statistics

    def top1(n: int, arm: str) -> dict[int, float]:
        return {r["seed"]: r["top1"] for r in rows if r["per_class"] == n and r["arm"] == arm}

    out = ["| images per class | arm | paired gain, mean (min to max) | scratch's std | gain > std | "
           "every seed above every scratch seed |", "|---|---|---|---|---|---|"]
    for n in args.sizes:
        base = top1(n, "scratch")
        std = statistics.stdev(base.values()) if len(base) > 1 else 0.0
        for arm in ARMS[1:]:
            got = top1(n, arm)
            diff = [got[k] - base[k] for k in sorted(got) if k in base]
            if not diff:
                continue
            mean = statistics.mean(diff)
            apart = min(got.values()) > max(base.values())
            out.append(f"| {n} | {arm} | {mean:+.2f} ({min(diff):+.2f} to {max(diff):+.2f}) | {std:.2f} | "
                       f"{'yes' if mean > std else 'no'} | {'yes' if apart else 'no'} |")
    return out + ["", "Paired gain: the arm's top-1 minus scratch's at the same seed, in points.", ""]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import cpu_name, load_average

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        release, pre = pretrain(args, Path(tmp))
        print(f"pretrained on classes 0-4: top-1 {pre['top1']:.2f}% in {pre['seconds']:.0f} s", flush=True)
        rows = finetune(args, Path(tmp), release)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, load average {load_average()}"
    text = page(args, pre, rows, time.perf_counter() - t0, machine)
    print(text)
    if args.out:
        Path(f"{args.out}.md").write_text(text)
        Path(f"{args.out}.json").write_text(json.dumps(dict(settings=vars(args), pretrain=pre, runs=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
