"""Dense prediction on Fashion-MNIST: super-resolution (ESPCN and LargeKernelSR, x2 and x3, against bicubic: PSNR
and SSIM) and segmentation (backbone x decode head on the mosaics: mIoU over seeds against the FCN yardstick,
pixel accuracy; params, MACs and latency of backbone vs head), each trained with `convscope train` (`--task sr`,
`--task segmentation`) and written as one section of the result page.

    PYTHONPATH=src python benchmarks/dense.py --part sr [--sr-models espcn,lksr] [--sr-train 10000] [--sr-epochs 5]
        [--threads 1] [--out benchmarks/results/dense.md]
    PYTHONPATH=src python benchmarks/dense.py --part seg [--backbones convnext_atto,lsnet_t] [--heads upernet,...]
        [--seeds 0,1,2] [--seg-train 1000] [--seg-eval 200] [--seg-epochs 10] [--jobs 2] [--threads 1]

SR: each model trained on the first `--sr-train` Fashion-MNIST training images (low resolution = antialiased bicubic
downsampling), scored once at the end on the 10,000 test images, with bicubic upsampling of the same inputs.
Segmentation: each backbone x head x seed trained on the first `--seg-train` mosaics of 96 x 128 for
`--seg-epochs` epochs and scored on the first `--seg-eval` held-out (val) mosaics, `--jobs` runs at a time (each
in its own process on `--threads` threads; the same seed gives the same numbers whichever process runs it); then a
table of params, MACs (`convscope.analysis.count`) and latency (`convscope.analysis.measure_interleaved`) of each
backbone alone and with each head at 256 x 256, measured first, before the training runs start. `--cache FILE`
keeps each finished run and the cost table (JSON lines) so a stopped sweep resumes where it was; `--render-only`
writes the page from it. `--part` rewrites only its own section of the page; the other is kept.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"sr": "## Super-resolution", "seg": "## Segmentation"}
#: How this page's setting was chosen and run (measured on this machine; written by hand, printed above the table).
SEG_NOTES = [
    "Hybrid: `lsnet_t` (LSNet-T: LS convolutions, LeViT-style self-attention in its last stage), the cheapest zoo"
    " variant with attention that every head takes at 96 x 128: with the FCN head at 96 x 128 it counts 0.089 "
    "GMACs against rmt_tiny 0.636, biformer_tiny 0.706 and caformer_s18 1.000 (transnext_micro takes only 224 x "
    "224 unless built for the size), and a first batch-8 training step took 0.9 s against 2.0 s (rmt_tiny), 4.2 s"
    " (biformer_tiny) and 1.7 s (caformer_s18). Its maps are at strides 8 to 64 (at 96 x 128: 12 x 16 down to 2 x"
    " 2; convnext_atto's 24 x 32 down to 3 x 4), so its heads decode from stride 8 and its FCN from a 2 x 2 map.",
    "Sizing: one epoch on 300 mosaics plus the 200-mosaic evaluation took 38 s (FCN) to 171 s (UPerNet) on "
    "convnext_atto and 40 s to 90 s on lsnet_t, two runs at a time, so 3 epochs (113 steps, from scratch) x 3 "
    "seeds x 10 models was what fit the hour this sweep had on the shared 2-core machine (load average about 6 "
    "throughout). The numbers are far from converged: they compare the heads at an equal, short budget.",
    "Run: 23:59 to 00:58 UTC (59 min wall). At 00:25, after 11 runs and running about 1.5x slower than sized, the"
    " sweep was stopped and restarted with `--cache` to take the remaining heads in the order fcn, upernet, "
    "deeplabv3plus, ocr, fpn; the 11 finished runs were reused (a seed gives the same numbers in any process: "
    "checked on a tiny setting, 2 backbones x 2 heads x 2 seeds, serially and two processes at a time, identical "
    "mIoU and pixel accuracy). The cost table was measured at the start of the first invocation; the page was "
    "written from the cache with `--render-only`.",
    "Reading: FCN is a weak yardstick at this budget. On convnext_atto (deepest map 3 x 4) it stays close to the "
    "chance level below (mIoU 0.093 against 0.074); on lsnet_t (2 x 2) it calls every pixel background for every "
    "seed (exactly chance, spread 0), so that backbone's deltas measure the heads against chance. UPerNet and "
    "DeepLabV3+ beat the FCN yardstick by more than the seed spread on both backbones: each of their seeds is "
    "above each FCN seed (+0.083 and +0.073 on convnext_atto, +0.075 and +0.080 on lsnet_t, against spreads of at"
    " most 0.013); so do FPN and OCR, by less. Every mIoU is low (0.18 at most): this ranks the heads early in "
    "training, not at convergence.",
]


def _train(out: Path, **settings) -> tuple[dict, float]:
    """A `convscope train` run's final scores and wall time."""
    from convscope.train import TrainConfig, train

    t0 = time.perf_counter()
    result = train(TrainConfig(out=str(out), device="cpu", quiet=True, **settings))
    return result.final, time.perf_counter() - t0


def sr_section(args: argparse.Namespace) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.sr_models.split(","):
            for scale in (2, 3):
                f, wall = _train(Path(tmp) / f"{model}_x{scale}", model=model, task="sr", sr_scale=scale,
                                 data_limit=args.sr_train, epochs=args.sr_epochs, eval_every=args.sr_epochs,
                                 threads=args.threads)
                gain = f["psnr"] - f["bicubic_psnr"]
                rows.append(f"| {model} | x{scale} | {f['bicubic_psnr']:.2f} | {f['psnr']:.2f} | {gain:+.2f} "
                            f"| {f['bicubic_ssim']:.4f} | {f['ssim']:.4f} | {wall:.0f} |")
                print(rows[-1], flush=True)
    return "\n".join([
        SECTIONS["sr"], "",
        f"Each model trained for {args.sr_epochs} epochs on the first {args.sr_train:,} Fashion-MNIST training "
        f"images (batch 32, lr 3e-3, AdamW, MSE), scored on the 10,000 test images; PSNR (dB) and SSIM over the "
        f"whole image, data range 1. espcn: ESPCN (conv 5x5-64, tanh, conv 3x3-32, tanh, sub-pixel conv); lksr: "
        f"`heads.sr.LargeKernelSR` (4 blocks of 13x13 depthwise conv + MLP at 32 channels, sub-pixel conv, added "
        f"to the bicubic upsampling).", "",
        "| model | scale | bicubic PSNR | PSNR | gain | bicubic SSIM | SSIM | wall (s) |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        _machine(args, f"--part sr --sr-models {args.sr_models} --sr-train {args.sr_train} "
                       f"--sr-epochs {args.sr_epochs}"), ""])


def _seg_run(backbone: str, head: str, seed: int, train_count: int, eval_count: int, epochs: int,
             threads: int) -> tuple[float, float, float]:
    """(mIoU, pixel accuracy, wall time in s) of one `convscope train --task segmentation` run on the mosaics."""
    with tempfile.TemporaryDirectory() as tmp:
        f, wall = _train(Path(tmp) / "run", model=backbone, task="segmentation", head=head, data="mosaics",
                         data_limit=train_count, eval_limit=eval_count, epochs=epochs, eval_every=epochs,
                         seed=seed, threads=threads)
    return f["miou"], f["pixel_acc"], wall


def _cached(args: argparse.Namespace) -> dict[tuple[str, str, int], tuple[float, float, float]]:
    """The runs `--cache` holds for this setting (JSON lines: backbone, head, seed, settings, results)."""
    if args.cache is None or not args.cache.is_file():
        return {}
    settings = [args.seg_train, args.seg_eval, args.seg_epochs, args.threads]
    lines = (json.loads(line) for line in args.cache.read_text().splitlines() if line.strip())
    return {tuple(d["key"]): tuple(d["result"]) for d in lines if d.get("settings") == settings}


def seg_runs(args: argparse.Namespace) -> dict[tuple[str, str, int], tuple[float, float, float]]:
    """Every backbone x head x seed run's (mIoU, pixel accuracy, wall s), head by head in `--heads` order, `--jobs`
    runs at a time (separate processes, each on `--threads` threads: a run's numbers do not depend on which
    process ran it). Runs in `--cache` are taken from it, and each finished run is appended to it; with
    `--render-only` nothing is trained."""
    results = _cached(args)
    keys = [(b, h, s) for h in args.heads.split(",") for b in args.backbones.split(",") for s in args.seeds]
    keys = [] if args.render_only else [k for k in keys if k not in results]
    settings = (args.seg_train, args.seg_eval, args.seg_epochs, args.threads)

    def record(key: tuple[str, str, int], result: tuple[float, float, float]) -> None:
        results[key] = result
        print(key, result, flush=True)
        if args.cache is not None:
            with args.cache.open("a") as f:
                f.write(json.dumps(dict(key=key, settings=list(settings), result=result)) + "\n")

    if args.jobs == 1:
        for k in keys:
            record(k, _seg_run(*k, *settings))
        return results
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_seg_run, *k, *settings): k for k in keys}
        for done in as_completed(futures):
            record(futures[done], done.result())
    return results


def _accuracy_rows(args: argparse.Namespace, runs: dict) -> list[str]:
    """Per backbone x head: mIoU mean and min-max over the seeds, pixel accuracy, the FCN yardstick's delta (a
    model with a seed missing: its row says so)."""
    rows = []
    for b in args.backbones.split(","):
        fcn = [runs[b, "fcn", s][0] for s in args.seeds if (b, "fcn", s) in runs]
        for h in args.heads.split(","):
            done = [runs[b, h, s] for s in args.seeds if (b, h, s) in runs]
            if len(done) < len(args.seeds) or len(fcn) < len(args.seeds):
                rows.append(f"| {b} | {h} | not run: {len(done)} of {len(args.seeds)} seeds finished in time "
                            f"| | | | | | {' '.join(f'{r[0]:.4f}' for r in done)} | |")
                continue
            miou, acc, wall = (list(v) for v in zip(*done, strict=True))
            delta = statistics.fmean(miou) - statistics.fmean(fcn)
            apart = "-" if h == "fcn" else ("yes" if min(miou) > max(fcn) else "no")
            rows.append(f"| {b} | {h} | {statistics.fmean(miou):.4f} | {min(miou):.4f}-{max(miou):.4f} "
                        f"| {max(miou) - min(miou):.4f} | {statistics.fmean(acc):.4f} | {delta:+.4f} | {apart} "
                        f"| {' '.join(f'{m:.4f}' for m in miou)} | {statistics.fmean(wall):.0f} |")
    return rows


def _all_background(eval_count: int) -> str:
    """The chance line: mIoU and pixel accuracy of predicting background everywhere on the scored val mosaics."""
    import torch

    from convscope.train.dense import SegmentationMetrics
    from convscope.train.segmentation import open_segmentation

    pairs, classes, _ = open_segmentation("mosaics", "val", count=eval_count)
    metrics = SegmentationMetrics(len(classes))
    metrics.update(torch.zeros_like(pairs.targets), pairs.targets)
    r = metrics.compute()
    return (f"Chance level (every pixel called background) on these {eval_count} val mosaics: mIoU "
            f"{r['miou']:.4f}, pixel accuracy {r['pixel_acc']:.4f}.")


def _efficiency_rows(args: argparse.Namespace) -> list[str]:
    """Per backbone x head at 1x1x256x256 (the trained models: one input channel, 11 classes): params and MACs
    (convscope.analysis.count, backbone vs head), and latency medians from one `measure_interleaved` call per
    backbone (the backbone alone and each backbone + head, one after another in rotating order)."""
    import torch

    from convscope.analysis import count, measure_interleaved
    from convscope.heads import create_segmenter

    torch.set_num_threads(args.threads)
    rows, x = [], torch.randn(1, 1, 256, 256)
    for b in args.backbones.split(","):
        torch.manual_seed(0)
        segs = {h: create_segmenter(b, h, 11, in_chans=1).eval() for h in args.heads.split(",")}
        first = next(iter(segs.values())).backbone
        fns = {"backbone": lambda m=first: m(x)}
        fns.update({h: (lambda s=s: s(x)) for h, s in segs.items()})
        with torch.inference_mode():
            lat = measure_interleaved(fns, warmup=2, rounds=args.latency_rounds, max_time_s=args.latency_time,
                                      clock="thread" if args.threads == 1 else "wall")
        base = lat["backbone"].median_s * 1e3
        for h, seg in segs.items():
            c = count(seg, tuple(x.shape))
            bb_macs = sum(r.macs for r in c.records if r.module.startswith("backbone."))
            bb_params = sum(p.numel() for p in seg.backbone.parameters())
            ms = lat[h].median_s * 1e3
            rows.append(f"| {b} | {h} | {bb_params / 1e6:.2f} | {(c.params - bb_params) / 1e6:.2f} "
                        f"| {bb_macs / 1e9:.3f} | {(c.totals.macs - bb_macs) / 1e9:.3f} | {base:.1f} | {ms:.1f} "
                        f"| {ms - base:.1f} | {lat[h].n} |")
            print(rows[-1], flush=True)
    return rows


def _cost_rows(args: argparse.Namespace) -> list[str]:
    """The cost table's rows in `--backbones` x `--heads` order: from `--cache` when it holds them for these
    models and thread count, else measured (and appended to it)."""
    wanted = [(b, h) for b in args.backbones.split(",") for h in args.heads.split(",")]
    lines = args.cache.read_text().splitlines() if args.cache is not None and args.cache.is_file() else []
    found = [d["cost_rows"] for d in map(json.loads, filter(None, lines))
             if "cost_rows" in d and d["threads"] == args.threads]
    rows = found[-1] if found else []
    by_model = {tuple(c.strip() for c in r.split("|")[1:3]): r for r in rows}
    if not set(wanted) <= set(by_model):
        found, rows = [], _efficiency_rows(args)
        by_model = {tuple(c.strip() for c in r.split("|")[1:3]): r for r in rows}
    if not found and args.cache is not None:
        with args.cache.open("a") as f:
            f.write(json.dumps(dict(cost_rows=rows, threads=args.threads)) + "\n")
    return [by_model[k] for k in wanted]


def seg_section(args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    eff = _cost_rows(args)
    runs = seg_runs(args)
    wall_min = (time.perf_counter() - t0) / 60
    seeds = ",".join(map(str, args.seeds))
    return "\n".join([
        SECTIONS["seg"], "",
        f"Each backbone x head trained with `convscope train --task segmentation` for {args.seg_epochs} epochs on "
        f"the first {args.seg_train:,} training mosaics of 96 x 128 (batch 8, lr 1e-3, AdamW, cosine, no "
        f"augmentation, from scratch), once per seed ({seeds}), scored at the end on the first {args.seg_eval} "
        f"val mosaics (11 classes: background + 10). mIoU: mean over the seeds, min-max and spread (max - min); "
        f"pixel accuracy: mean over the seeds; vs FCN: mean mIoU minus the FCN yardstick's mean mIoU on the same "
        f"backbone; apart: the head's worst seed beats FCN's best seed (the two seed ranges do not overlap). wall: "
        f"mean seconds per run, {args.jobs} run(s) at a time on {args.threads} thread(s) each.", "",
        "\n\n".join(SEG_NOTES), "",
        "| backbone | head | mIoU | min-max | spread | pixel acc | vs FCN | apart | per seed | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|", *_accuracy_rows(args, runs), "", _all_background(args.seg_eval),
        "",
        "### Cost at 256 x 256", "",
        "Batch 1, one input channel, 11 classes (the trained models), eval mode. Params and MACs from "
        "`convscope.analysis.count` (a module's MACs go to the backbone when it sits under `backbone.`, the rest "
        "- neck, head, the final upsampling - to the head). Latency: median of repeated forward passes timed by "
        "`convscope.analysis.measure_interleaved` in one process (per backbone one call: the backbone alone and "
        "each backbone + head, in rotating order, "
        + ("thread CPU clock" if args.threads == 1 else "wall clock") + "); head ms = full - backbone; n = "
        "rounds timed.", "",
        "| backbone | head | backbone params (M) | head params (M) | backbone GMACs | head GMACs | backbone ms "
        "| backbone + head ms | head ms | n |", "|---|---|---|---|---|---|---|---|---|---|", *eff, "",
        f"Training runs: {sum(r[2] for r in runs.values()) / 60:.0f} min of process time in all"
        + ("" if args.render_only else f"; this invocation: {wall_min:.0f} min wall") + ". "
        + _machine(args, f"--part seg --backbones {args.backbones} --heads {args.heads} --seeds {seeds} "
                         f"--seg-train {args.seg_train} --seg-eval {args.seg_eval} --seg-epochs {args.seg_epochs} "
                         f"--jobs {args.jobs}"), ""])


def _machine(args: argparse.Namespace, flags: str) -> str:
    """The machine line: CPU, threads, the load average at the end (unless the page was only rendered from
    `--cache`), and the command."""
    from common import cpu_name, load_average

    load = "" if getattr(args, "render_only", False) else f", load average {load_average()} at the end"
    return (f"Machine: {cpu_name()}, {args.threads} thread(s){load}. Command: "
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


def _seeds(text: str) -> tuple[int, ...]:
    """--seeds 0,1,2: distinct non-negative integers."""
    try:
        seeds = tuple(int(t) for t in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers such as 0,1,2; got {text!r}")
    return seeds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("sr", "seg"), required=True)
    p.add_argument("--sr-models", default="espcn,lksr", help="SR models (heads.SR_MODELS), comma-separated")
    p.add_argument("--sr-train", type=int, default=10000)
    p.add_argument("--sr-epochs", type=int, default=5)
    p.add_argument("--backbones", default="convnext_atto,lsnet_t")
    p.add_argument("--heads", default="fcn,fpn,upernet,deeplabv3plus,ocr")
    p.add_argument("--seeds", type=_seeds, default=(0, 1, 2))
    p.add_argument("--seg-train", type=int, default=1000)
    p.add_argument("--seg-eval", type=int, default=200)
    p.add_argument("--seg-epochs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1, help="segmentation runs at a time (separate processes)")
    p.add_argument("--cache", type=Path, help="JSON lines of finished segmentation runs: reused, appended to")
    p.add_argument("--render-only", action="store_true", help="write the page from --cache without training")
    p.add_argument("--latency-rounds", type=int, default=20)
    p.add_argument("--latency-time", type=float, default=60.0, help="seconds at most per backbone's timing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dense.md")
    args = p.parse_args()
    section = sr_section(args) if args.part == "sr" else seg_section(args)
    write_page(args.out, args.part, section)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
