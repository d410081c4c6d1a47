"""Semi-supervised: does self-supervised pre-training (`convscope pretrain`, RotNet and SparK) on unlabelled
images lift `convscope train` on the small-data folder, and the demo model on full Fashion-MNIST labels?

Pre-training: each method pre-trains convnext_atto once (seed 0) within `--pretrain-minutes`, on the Fashion-MNIST
training images that the small folder does not use (all 60,000 for the default folder; 8,000-59,999 with `--source
train`), written as one flat folder of PNGs and read with `--ignore-labels`: their labels are never read. The folder
path raises the 28x28 images to 64x64 (two of the model's last strides), so SparK's mask has a 2x2 grid to hide.
Both parts fine-tune from these two encoders.

Part `small`: the 8,000-image, 10-class folder of small_data_defaults.py (`write_folder`, test images 2,000-9,999 by
default). `convscope train --model convnext_atto --data FOLDER --epochs 10` (the default recipe, 64x64) fine-tunes
each encoder (`--init-from encoder.safetensors`) at three seeds, against the same command from scratch at the same
seeds (a seed fixes the 10% held-out split and the initialisation, so each pair shares its split).

Part `demo`: the demo's recipe (examples/demo.py: 7 epochs, batch 128, lr 2e-3, whole 28x28 images in memory) on full
Fashion-MNIST labels, from scratch and from each encoder, top-1 on the 10,000 test images: does pre-training cost
anything when labels are plentiful?

The pre-training runs have a time budget, so run them on a quiet machine (`--pretrain-only`); the fine-tuning runs
have none, so their results do not depend on the load.

    PYTHONPATH=src python benchmarks/pretrain.py [--parts small,demo] [--methods rotnet,spark] [--seeds 0,1,2]
        [--demo-seeds S] [--pretrain-minutes 30] [--pretrain-only] [--threads 2] [--jobs 1] [--work DIR]
        [--out benchmarks/results/pretrain.md]
    PYTHONPATH=src python benchmarks/pretrain.py --toy      # a few minutes: tiny data, 1 epoch, to check it runs

The page names the machine, the load average and the command; a .json beside it holds every number.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "convnext_atto"
DEMO_RECIPE = ["--epochs", "7", "--batch-size", "128", "--lr", "2e-3", "--warmup-epochs", "0.3", "--scale", "1,1",
               "--ratio", "1,1"]


def write_unused(root: Path, source: str, limit: int | None) -> int:
    """The Fashion-MNIST training images the small folder of `source` does not use, as root/NNNNN.png (no class
    subfolders: nothing of the labels is written); returns how many."""
    from PIL import Image
    from small_data_defaults import COUNT, SOURCES

    from convscope.data import fashion_mnist

    split, first = SOURCES[source]
    images = fashion_mnist(split="train").images
    used = set(range(first, first + COUNT)) if split == "train" else set()
    keep = [i for i in range(images.shape[0]) if i not in used][:limit]
    for i in keep:
        Image.fromarray(images[i, 0].numpy()).save(root / f"{i:05d}.png")
    return len(keep)


def _run(args: list[str], threads: int) -> tuple[float, str]:
    """`python -m convscope ARGS` (this checkout's src first); (wall seconds, stdout); RuntimeError on failure."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "convscope", *args, "--threads", str(threads), "--progress", "plain"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc.stdout


def _reused(run: Path, result: str) -> float | None:
    """With --work: the wall seconds of `run` if it finished in an earlier invocation (its `result` file and
    bench.json written), so a stopped benchmark goes on where it was; else None (and any partial run is removed)."""
    done = run / "bench.json"
    if done.is_file() and (run / result).is_file():
        return float(json.loads(done.read_text())["wall_s"])
    if run.exists():
        shutil.rmtree(run)
    return None


def _done(run: Path, wall: float) -> None:
    (run / "bench.json").write_text(json.dumps({"wall_s": wall}))


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def pretrain(method: str, data: str, out: Path, a: argparse.Namespace) -> dict:
    """One pre-training run within the budget; its time, epochs and pretext score."""
    flags = ["pretrain", "--method", method, "--model", MODEL, "--data", data, "--ignore-labels", "--out", str(out),
             "--epochs", str(a.pretrain_epochs), "--time-budget", f"{a.pretrain_minutes * 60:.0f}s", *a.limit_flags]
    wall = _reused(out, "encoder.safetensors")
    if wall is None:
        wall, _ = _run(flags, a.threads)
        _done(out, wall)
    last = _history(out)[-1]
    score = last.get("top1", last.get("recon_loss"))
    batch = json.loads((out / "config.json").read_text())["batch_size"]
    return dict(method=method, wall_s=wall, epochs=last["epoch"], steps=last["step"], batch=batch, score=score,
                score_name="rotation accuracy (%)" if method == "rotnet" else "reconstruction loss")


def finetune(data: str, out: Path, seed: int, init: Path | None, extra: list[str], a: argparse.Namespace) -> dict:
    """One `convscope train` run (from `init`'s encoder, or from scratch); its final top-1 and time."""
    flags = ["train", "--model", MODEL, "--data", data, "--seed", str(seed), "--out", str(out), *extra,
             *a.limit_flags]
    if init is not None:
        flags += ["--init-from", str(init)]
    wall = _reused(out, "last.safetensors")
    if wall is None:
        wall, _ = _run(flags, max(1, a.threads // a.jobs))
        _done(out, wall)
    history = _history(out)
    return dict(seed=seed, top1=history[-1]["top1"], wall_s=wall, curve=[h["top1"] for h in history])


def unlabelled(tmp: Path, a: argparse.Namespace) -> tuple[Path, int]:
    """The unlabelled images of `write_unused` as one flat folder, written once per --work (a finished folder is
    marked by images.json); the folder and how many images it holds."""
    folder = tmp / "unlabelled"
    if (tmp / "images.json").is_file():
        return folder, json.loads((tmp / "images.json").read_text())["unlabelled"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    n = write_unused(folder, a.source, a.pretrain_images)
    (tmp / "images.json").write_text(json.dumps({"unlabelled": n}))
    return folder, n


def pretrain_all(tmp: Path, a: argparse.Namespace) -> tuple[dict[str, dict], int]:
    """Each method pre-trained once on the unlabelled folder; both parts fine-tune from these encoders (the demo
    part's unlabelled images are the same Fashion-MNIST training images when the small folder takes its images
    from the test split, the default)."""
    pre_data, n = unlabelled(tmp, a)
    return {m: pretrain(m, str(pre_data), tmp / f"pre-{m}", a) for m in a.methods}, n


def part_data(part: str, tmp: Path, a: argparse.Namespace) -> tuple[str, list[str], list[int]]:
    """The `--data` of a part's fine-tuning runs (the small folder written once per --work), its recipe flags and
    its seeds."""
    if part == "demo":
        extra = DEMO_RECIPE if a.finetune_epochs == 10 else [*DEMO_RECIPE[2:], "--epochs", str(a.finetune_epochs)]
        return "fashion-mnist", extra, a.demo_seeds
    from small_data_defaults import write_folder

    folder = tmp / "folder"
    if not (tmp / "folder.json").is_file():     # written in full by an earlier invocation with the same --work
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        write_folder(folder, a.source)
        (tmp / "folder.json").write_text(json.dumps({"source": a.source}))
    return str(folder), ["--epochs", str(a.finetune_epochs)], a.seeds


def run_parts(tmp: Path, pre: dict[str, dict], n_unlabelled: int, a: argparse.Namespace) -> list[dict]:
    """Fine-tune from each pre-trained encoder and from scratch at every seed of every part: all runs in one queue
    of `--jobs` workers, part by part and seed by seed (a stopped benchmark has whole seeds)."""
    setup = {part: part_data(part, tmp, a) for part in a.parts}
    arms = ["scratch", *a.methods]
    todo = [(part, seed, arm) for part in a.parts for seed in setup[part][2] for arm in arms]

    def one(job: tuple[str, int, str]) -> dict:
        part, seed, arm = job
        data, extra, _ = setup[part]
        init = None if arm == "scratch" else tmp / f"pre-{arm}" / "encoder.safetensors"
        r = finetune(data, tmp / f"{part}-ft-{arm}-{seed}", seed, init, extra, a)
        print(f"{part} {arm} seed {seed}: top-1 {r['top1']:.2f}%", flush=True)
        return r

    out = {part: dict(part=part, unlabelled_images=n_unlabelled, finetune_flags=" ".join(setup[part][1]),
                      seeds=setup[part][2], arms={arm: dict(pretrain=pre.get(arm), runs=[]) for arm in arms})
           for part in a.parts}
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:           # each job is a subprocess
        for (part, _, arm), r in zip(todo, pool.map(one, todo), strict=True):
            out[part]["arms"][arm]["runs"].append(r)
    return list(out.values())


def render(parts: list[dict], a: argparse.Namespace, cpu: str, load: tuple[str, str], total: float) -> str:
    """The result page: one table per part, a row per arm (its pre-training, each seed's top-1, the mean and the
    paired difference to scratch)."""
    lines = ["# Semi-supervised pre-training: RotNet and SparK before `convscope train`", "",
             f"Machine: {cpu}; pre-training with {a.threads} torch thread(s), fine-tuning {a.jobs} run(s) at a "
             f"time with {max(1, a.threads // a.jobs)} each; load average {load[0]} before, {load[1]} after this "
             f"invocation ({total / 60:.1f} min; runs finished by an earlier invocation with the same --work are "
             f"reused, and their own wall clocks are below).", "",
             f"Command: `PYTHONPATH=src python benchmarks/pretrain.py {' '.join(sys.argv[1:])}`", "",
             f"Pre-training budget: {a.pretrain_minutes:g} min per method (`--time-budget`, at most "
             f"{a.pretrain_epochs} epochs), convnext_atto, labels never read.", ""]
    for p in parts:
        lines += [f"## {p['part']}", "", f"Pre-training images: {p['unlabelled_images']:,}; fine-tuning: "
                  f"`convscope train --model {MODEL} {p['finetune_flags']}`.", "",
                  "| arm | pre-training (time, steps, pretext score) | " + " | ".join(
                      f"seed {s}" for s in p["seeds"]) + " | mean top-1 | vs scratch (paired) |",
                  "|---|---|" + "---|" * len(p["seeds"]) + "---|---|"]
        scratch = [r["top1"] for r in p["arms"]["scratch"]["runs"]]
        for arm, rec in p["arms"].items():
            top1 = [r["top1"] for r in rec["runs"]]
            pre = rec["pretrain"]
            pre_text = "-" if pre is None else (
                f"{pre['wall_s'] / 60:.1f} min, {pre['steps']} steps of {pre['batch']} "
                f"({pre['steps'] * pre['batch']:,} images), {pre['score_name']} {pre['score']:.4g}")
            pairs = zip(top1, scratch, strict=True)
            diff = "-" if arm == "scratch" else f"{statistics.mean(t - s for t, s in pairs):+.2f}"
            lines.append(f"| {arm} | {pre_text} | " + " | ".join(f"{t:.2f}%" for t in top1)
                         + f" | {statistics.mean(top1):.2f}% | {diff} |")
        walls = [r["wall_s"] / 60 for rec in p["arms"].values() for r in rec["runs"]]
        lines += ["", f"Fine-tuning runs: median {statistics.median(walls):.1f} min of wall clock each "
                  f"({len(walls)} runs, {a.jobs} at a time).", "",
                  "Top-1 after each fine-tuning epoch, mean over the seeds (the curves):", ""]
        epochs = min(len(r["curve"]) for rec in p["arms"].values() for r in rec["runs"])
        lines += ["| arm | " + " | ".join(str(e + 1) for e in range(epochs)) + " |", "|---|" + "---|" * epochs]
        for arm, rec in p["arms"].items():
            lines.append(f"| {arm} | " + " | ".join(
                f"{statistics.mean(r['curve'][e] for r in rec['runs']):.2f}" for e in range(epochs)) + " |")
        lines.append("")
    return "\n".join(lines)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="small,demo", help="small, demo or both (comma-separated)")
    ap.add_argument("--methods", default="rotnet,spark", help="rotnet, spark or both (comma-separated)")
    ap.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (comma-separated)")
    ap.add_argument("--demo-seeds", default=None, help="the demo part's seeds (default: --seeds)")
    ap.add_argument("--source", default="test", choices=("test", "train"), help="the small folder's images "
                    "(small_data_defaults.SOURCES)")
    ap.add_argument("--pretrain-minutes", type=float, default=30.0, help="time budget of each pre-training run")
    ap.add_argument("--pretrain-epochs", type=int, default=100, help="epochs a pre-training run may take at most")
    ap.add_argument("--pretrain-images", type=int, default=None, help="only the first N unlabelled images")
    ap.add_argument("--finetune-epochs", type=int, default=10, help="10: the brief's recipe (demo: its own 7)")
    ap.add_argument("--limit", type=int, default=None, help="--data-limit and --eval-limit of every run (toy runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1, help="fine-tuning runs at once, each with threads / jobs torch "
                    "threads (pre-training always runs alone, with --threads)")
    ap.add_argument("--toy", action="store_true", help="a check that it runs: 256 images, 1 epoch, 1 seed, "
                    "small part, 1-minute budget")
    ap.add_argument("--pretrain-only", action="store_true", help="stop after pre-training (with --work, the "
                    "fine-tuning runs can follow later, on a machine with other work: they have no time budget)")
    ap.add_argument("--out", default=None, help="write the result page here (markdown; a .json next to it)")
    ap.add_argument("--work", default=None, metavar="DIR", help="keep the images and runs here: run again with the "
                    "same DIR and settings, a stopped benchmark goes on where it was (default: a temporary dir)")
    a = ap.parse_args()
    if a.toy:
        a.parts, a.seeds, a.pretrain_minutes, a.pretrain_epochs = "small", "0", 1.0, 1
        a.pretrain_images, a.finetune_epochs, a.limit = 256, 1, 256
    a.parts, a.methods = a.parts.split(","), [m for m in a.methods.split(",") if m]
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.demo_seeds = a.seeds if a.demo_seeds is None else [int(s) for s in a.demo_seeds.split(",")]
    a.limit_flags = [] if a.limit is None else ["--data-limit", str(a.limit), "--eval-limit", str(a.limit)]
    bad = [p for p in a.parts if p not in ("small", "demo")] + [m for m in a.methods if m not in ("rotnet", "spark")]
    if bad:
        ap.error(f"unknown part(s) or method(s): {bad}")
    return a


def main() -> int:
    a = _args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import cpu_name, load_average

    before, t0 = load_average(), time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = Path(a.work) if a.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        try:
            pre, n_unlabelled = pretrain_all(work, a)
            if a.pretrain_only:
                for m, r in pre.items():
                    print(f"{m}: {r['wall_s'] / 60:.1f} min, {r['epochs']} epochs, {r['score_name']} {r['score']:.4g}")
                return 0
            parts = run_parts(work, pre, n_unlabelled, a)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
    page = render(parts, a, cpu_name(), (before, load_average()), time.perf_counter() - t0)
    print(page)
    if a.out:
        Path(a.out).write_text(page)
        Path(a.out).with_suffix(".json").write_text(json.dumps(parts, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
