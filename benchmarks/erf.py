"""Effective receptive fields (RepLKNet's measure, `convscope.explain.effective_receptive_field`): (a) the mixer
bench's 7x7 depthwise, dilated re-parameterised 7x7 and attention mixers (one MetaFormer skeleton), trained briefly
on Fashion-MNIST with the mixer bench's recipe; (b) ConvNeXt-T, RepLKNet-31B and UniRepLKNet-T at random
initialisation. Area ratios at t = 0.2, 0.3, 0.5, 0.99 of the last stage's central output, and heatmaps.

    PYTHONPATH=src python benchmarks/erf.py --threads 2 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an idx directory")
    p.add_argument("--mixers", default="dwconv,dilated_reparam,attention", help="mixer bench mixers (part a)")
    p.add_argument("--zoo", default="convnext_tiny,replknet_31b,unireplknet_t", help="zoo models (part b)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs of each mixer model")
    p.add_argument("--limit-train", type=int, default=5000, help="training images of each mixer model")
    p.add_argument("--limit-eval", type=int, default=1000)
    p.add_argument("--mixer-images", type=int, default=16, help="test images averaged for a mixer model's ERF")
    p.add_argument("--mixer-size", type=int, default=160, help="input side of the mixer models' ERF")
    p.add_argument("--zoo-images", type=int, default=4, help="test images averaged for a zoo model's ERF")
    p.add_argument("--zoo-size", type=int, default=224, help="input side of the zoo models' ERF")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="directory for erf.md / .json / _mixers.png / _zoo.png "
                   "(default: print only)")
    return p.parse_args(argv)


def _train_mixer(mixer: str, args: argparse.Namespace, tmp: str):
    """(trained model, its weights file's description, top-1) of mixer_bench_<mixer>, the mixer bench's recipe."""
    from convscope.bench.mixers import INPUT_SIZE
    from convscope.models.source import read_meta
    from convscope.train import TrainConfig, train

    name = f"mixer_bench_{mixer}"
    cfg = TrainConfig(model=name, data=args.data, out=str(Path(tmp) / name), epochs=args.epochs, batch_size=64,
                      lr=2e-3, warmup_epochs=0.0, input_size=INPUT_SIZE, in_chans=1, data_limit=args.limit_train,
                      eval_limit=args.limit_eval, scale=(0.5, 1.0), seed=args.seed, threads=args.threads,
                      quiet=True, progress="none", device="cpu")
    res = train(cfg)
    return res.model.eval(), read_meta(Path(cfg.out) / "last.safetensors"), float(res.final["top1"])


def _images(args: argparse.Namespace, n: int, size: int, mean, std, in_chans: int):
    """The first `n` Fashion-MNIST test images, whole, resized to `size` and normalised (grey repeated to RGB)."""
    from convscope.data import fashion_mnist
    from convscope.data.transforms import EvalTransform

    root = None if args.data == "fashion-mnist" else Path(args.data)
    images = fashion_mnist(root, "test").images[:n]
    return EvalTransform(size, mean, std, 1.0)(images.expand(-1, in_chans, -1, -1))


def _erf(model, x, batch: int):
    from convscope.explain import effective_receptive_field

    return effective_receptive_field(model, [x[i:i + batch] for i in range(0, len(x), batch)],
                                     thresholds=THRESHOLDS)


def part_mixers(args: argparse.Namespace) -> list[dict]:
    """Train each mixer model and measure its ERF on test images at --mixer-size."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="erf_bench_") as tmp:
        for mixer in [m for m in args.mixers.split(",") if m]:
            t0 = time.perf_counter()
            model, meta, top1 = _train_mixer(mixer, args, tmp)
            train_s = time.perf_counter() - t0
            x = _images(args, args.mixer_images, args.mixer_size, meta["mean"], meta["std"], 1)
            t0 = time.perf_counter()
            erf = _erf(model, x, 8)
            rows.append(dict(model=meta["model"], mixer=mixer, top1=top1, train_s=train_s,
                             erf_s=time.perf_counter() - t0, images=erf.images, size=args.mixer_size,
                             area_ratio={f"{t:g}": r for t, r in erf.area_ratio.items()}, map=erf.map))
            print(f"{meta['model']}: top-1 {top1:.2f}%, area ratios {rows[-1]['area_ratio']}", flush=True)
    return rows


def part_zoo(args: argparse.Namespace) -> list[dict]:
    """Each zoo model at random initialisation (seeded), its ERF on test images at --zoo-size."""
    import torch

    from convscope.models import create_model, model_card

    rows = []
    for name in [m for m in args.zoo.split(",") if m]:
        torch.manual_seed(args.seed)
        model = create_model(name).eval()
        cfg = model_card(name).pretrained_cfg
        x = _images(args, args.zoo_images, args.zoo_size, cfg.mean, cfg.std, 3)
        t0 = time.perf_counter()
        erf = _erf(model, x, 2)
        rows.append(dict(model=name, erf_s=time.perf_counter() - t0, images=erf.images, size=args.zoo_size,
                         area_ratio={f"{t:g}": r for t, r in erf.area_ratio.items()}, map=erf.map))
        print(f"{name}: area ratios {rows[-1]['area_ratio']} [{rows[-1]['erf_s']:.0f} s]", flush=True)
        del model
    return rows


def _table(rows: list[dict], first: tuple[str, ...], cells) -> str:
    from convscope.utils import markdown_table

    heads = (*first, *(f"t = {t:g}" for t in THRESHOLDS))
    return markdown_table(heads, [[*cells(r), *(f"{r['area_ratio'][f'{t:g}']:.4f}" for t in THRESHOLDS)]
                                  for r in rows])


def page(args: argparse.Namespace, command: str, machine: str, mixers: list[dict], zoo: list[dict]) -> str:
    """The result page: settings, machine, the two tables and their figures."""
    from convscope.bench.mixers import INPUT_SIZE, RECIPE

    a = _table(mixers, ("mixer", "model", "top-1 (%)", "train (s)"),
               lambda r: [r["mixer"], f"`{r['model']}`", f"{r['top1']:.2f}", f"{r['train_s']:.0f}"])
    b = _table(zoo, ("model", "ERF time (s)"), lambda r: [f"`{r['model']}`", f"{r['erf_s']:.0f}"])
    return f"""# Effective receptive fields

`{command}`

Machine: {machine}

Measure: RepLKNet's (2203.06717, `erf/visualize_erf.py`, `analyze_erf.py`), `convscope.explain.erf`: the
gradient of the last stage's central output (ReLU, summed over channels) with respect to the input, ReLU, summed
over input channels, averaged over the images, log10(1 + s) scaled to a maximum of 1. The area ratio at t is the
area of the smallest centred square holding more than t of that map's sum, as a fraction of the input's area
(1.0: no square short of the whole input does). Smaller = a more concentrated field. Both input sides below
make the last stage's map odd ({args.mixer_size // 32}x{args.mixer_size // 32} and {args.zoo_size // 32}x\
{args.zoo_size // 32}), so its central position is the image's centre (on an even map, RepLKNet's position
(h // 2, w // 2) lies half a cell below and right of it).

## (a) Mixer bench models trained on Fashion-MNIST

Each `mixer_bench_<mixer>` (one MetaFormer skeleton, depths (2, 2, 2, 2), widths (32, 64, 128, 256); only the
token mixer differs: 7x7 depthwise, the dilated re-parameterised 7x7 of UniRepLKNet, global self-attention)
trained {args.epochs} epoch(s) on the first {args.limit_train} training images of {args.data} at
{INPUT_SIZE}x{INPUT_SIZE}, seed {args.seed} ({RECIPE}; batch 64, lr 0.002); top-1 on the first {args.limit_eval}
test images. ERF over the first {args.mixer_images} test images, upscaled to {args.mixer_size}x{args.mixer_size}
(whole image, normalised by each run's mean and std).

{a}

![mixer ERFs](erf_mixers.png)

## (b) Zoo models at random initialisation

`create_model(name)` after `torch.manual_seed({args.seed})`, eval mode; ERF over the first {args.zoo_images}
Fashion-MNIST test images, grey repeated to RGB, resized whole to {args.zoo_size}x{args.zoo_size}, normalised by
each card's mean and std.

{b}

![zoo ERFs](erf_zoo.png)
"""


def _write(out: Path, text: str, mixers: list[dict], zoo: list[dict], settings: dict, machine: dict) -> None:
    from convscope.explain.page import save_erf_figure
    from convscope.files import atomic_write_json, atomic_write_text

    def plain(rows):
        return [{k: v for k, v in r.items() if k != "map"} for r in rows]

    if mixers:
        save_erf_figure([(f"{r['mixer']} (top-1 {r['top1']:.1f}%)", r["map"]) for r in mixers],
                        out / "erf_mixers.png")
    if zoo:
        save_erf_figure([(f"{r['model']} (random init)", r["map"]) for r in zoo], out / "erf_zoo.png")
    atomic_write_json(out / "erf.json", dict(settings=settings, machine=machine, mixers=plain(mixers),
                                            zoo=plain(zoo)))
    atomic_write_text(out / "erf.md", text)
    print(f"wrote {out / 'erf.md'}, erf.json, erf_mixers.png, erf_zoo.png")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import torch
    from common import load_average

    from convscope.analysis.hardware import describe_machine, machine_info

    if args.threads:
        torch.set_num_threads(args.threads)
    start_load = load_average()
    t0 = time.perf_counter()
    mixers = part_mixers(args)
    zoo = part_zoo(args)
    total = time.perf_counter() - t0
    info = machine_info("cpu")
    machine = (f"{describe_machine(info)}; load average (1, 5, 15 min) {start_load} at the start, "
               f"{load_average()} at the end; {total / 60:.1f} min in all.")
    command = "python benchmarks/erf.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = page(args, command.rstrip(), machine, mixers, zoo)
    print(text)
    if args.out:
        _write(Path(args.out), text, mixers, zoo, vars(args), info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
