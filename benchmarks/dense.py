"""Dense prediction on Fashion-MNIST: super-resolution (ESPCN x2 and x3 against bicubic: PSNR and SSIM) and
segmentation (backbone x decode head on the mosaics: mIoU, pixel accuracy, wall time), each trained with
`convscope train` (`--task sr`, `--task segmentation`) and written as one section of the result page.

    PYTHONPATH=src python benchmarks/dense.py --part sr [--sr-train 10000] [--sr-epochs 5] [--threads 1]
        [--out benchmarks/results/dense.md]
    PYTHONPATH=src python benchmarks/dense.py --part seg [--backbones convnext_atto,...] [--heads upernet,...]

SR: ESPCN trained on the first `--sr-train` Fashion-MNIST training images (low resolution = antialiased bicubic
downsampling), scored once at the end on the 10,000 test images, with bicubic upsampling of the same inputs.
Segmentation: each backbone x head trained on `--seg-train` mosaics of 96 x 128 for `--seg-epochs` epochs and
scored on 200 held-out (val) mosaics. `--part` rewrites only its own section of the page; the other is kept.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"sr": "## Super-resolution", "seg": "## Segmentation"}


def _train(out: Path, **settings) -> tuple[dict, float]:
    """A `convscope train` run's final scores and wall time."""
    from convscope.train import TrainConfig, train

    t0 = time.perf_counter()
    result = train(TrainConfig(out=str(out), device="cpu", quiet=True, **settings))
    return result.final, time.perf_counter() - t0


def sr_section(args: argparse.Namespace) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (2, 3):
            f, wall = _train(Path(tmp) / f"x{scale}", model="espcn", task="sr", sr_scale=scale,
                             data_limit=args.sr_train, epochs=args.sr_epochs, eval_every=args.sr_epochs,
                             threads=args.threads)
            gain = f["psnr"] - f["bicubic_psnr"]
            rows.append(f"| x{scale} | {f['bicubic_psnr']:.2f} | {f['psnr']:.2f} | {gain:+.2f} "
                        f"| {f['bicubic_ssim']:.4f} | {f['ssim']:.4f} | {wall:.0f} |")
            print(rows[-1], flush=True)
    return "\n".join([
        SECTIONS["sr"], "",
        f"ESPCN trained for {args.sr_epochs} epochs on the first {args.sr_train:,} Fashion-MNIST training images "
        f"(batch 32, lr 3e-3, AdamW, MSE), scored on the 10,000 test images; PSNR (dB) and SSIM over the whole "
        f"image, data range 1.", "",
        "| scale | bicubic PSNR | ESPCN PSNR | gain | bicubic SSIM | ESPCN SSIM | wall (s) |",
        "|---|---|---|---|---|---|---|", *rows, "",
        _machine(args, f"--part sr --sr-train {args.sr_train} --sr-epochs {args.sr_epochs}"), ""])


def seg_section(args: argparse.Namespace) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones.split(","):
            for head in args.heads.split(","):
                f, wall = _train(Path(tmp) / f"{backbone}_{head}", model=backbone, task="segmentation", head=head,
                                 data="mosaics", data_limit=args.seg_train, epochs=args.seg_epochs,
                                 eval_every=args.seg_epochs, threads=args.threads)
                rows.append(f"| {backbone} | {head} | {f['miou']:.4f} | {f['pixel_acc']:.4f} | {wall:.0f} |")
                print(rows[-1], flush=True)
    return "\n".join([
        SECTIONS["seg"], "",
        f"Each backbone x head trained for {args.seg_epochs} epochs on {args.seg_train:,} mosaics of 96 x 128 (batch "
        f"8, lr 1e-3), scored on the 200 val mosaics.", "",
        "| backbone | head | mIoU | pixel acc | wall (s) |", "|---|---|---|---|---|", *rows, "",
        _machine(args, f"--part seg --backbones {args.backbones} --heads {args.heads} --seg-train {args.seg_train} "
                       f"--seg-epochs {args.seg_epochs}"), ""])


def _machine(args: argparse.Namespace, flags: str) -> str:
    from common import cpu_name, load_average

    return (f"Machine: {cpu_name()}, {args.threads} thread(s), load average {load_average()} at the end. Command: "
            f"`PYTHONPATH=src python benchmarks/dense.py {flags} --threads {args.threads}`.")


def write_page(path: Path, part: str, section: str) -> None:
    """The page with `section` in place of its part's old one (the other part's section kept)."""
    old = path.read_text() if path.is_file() else ""
    kept = {}
    for name, heading in SECTIONS.items():
        m = re.search(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", old, flags=re.S | re.M)
        kept[name] = m.group(0).rstrip() + "\n" if m else f"{heading}\n\nNot run yet: `PYTHONPATH=src python " \
                                                         f"benchmarks/dense.py --part {name}`.\n"
    kept[part] = section
    head = "# Dense prediction on Fashion-MNIST\n\nWritten by `benchmarks/dense.py` (see its docstring).\n"
    path.write_text("\n".join([head, kept["sr"], kept["seg"]]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("sr", "seg"), required=True)
    p.add_argument("--sr-train", type=int, default=10000)
    p.add_argument("--sr-epochs", type=int, default=5)
    p.add_argument("--backbones", default="convnext_atto,inception_next_atto")
    p.add_argument("--heads", default="fcn,fpn,upernet,deeplabv3plus,ocr")
    p.add_argument("--seg-train", type=int, default=1000)
    p.add_argument("--seg-epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dense.md")
    args = p.parse_args()
    section = sr_section(args) if args.part == "sr" else seg_section(args)
    write_page(args.out, args.part, section)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
