"""How far other settings move `convscope train --model convnext_atto --data DIR --epochs 10` on the small-data
folder: the data-aware defaults against single changes of learning rate, regularisation, augmentation, input
size, schedule length, split seed and the images themselves.

Each trial is the small_data_defaults run (same folder, same 10% held out, one torch thread) with some flags
added; trials run side by side, `--parallel` at a time, each on one thread, so that a 2-core machine runs two.
Runs on one thread are deterministic, so a trial's numbers repeat exactly on the same machine and torch build.

    PYTHONPATH=src python benchmarks/small_data_sweep.py [--trials NAME,NAME...] [--parallel 2] [--out PAGE.md]
    PYTHONPATH=src python benchmarks/small_data_sweep.py --list
    PYTHONPATH=src python benchmarks/small_data_sweep.py --trials NAME,... --merge --out PAGE.md   # add/redo rows
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (what changes, extra `convscope train` flags, image source for small_data_defaults.write_folder)
TRIALS: dict[str, tuple[str, list[str], str]] = {
    "defaults": ("nothing: the data-aware defaults", [], "test"),
    "seed1": ("split and initialisation seed 1", ["--seed", "1"], "test"),
    "seed2": ("split and initialisation seed 2", ["--seed", "2"], "test"),
    "lr4e-3": ("twice the peak learning rate", ["--lr", "4e-3"], "test"),
    "lr1e-3": ("half the peak learning rate", ["--lr", "1e-3"], "test"),
    "no-ls": ("no label smoothing", ["--label-smoothing", "0"], "test"),
    "ema": ("weight EMA (decay 0.995; its own top-1 in brackets)", ["--ema-decay", "0.995"], "test"),
    "drop-path": ("stochastic depth 0.1", ["--drop-path", "0.1"], "test"),
    "wd0.5": ("weight decay 0.5 (10x)", ["--weight-decay", "0.5"], "test"),
    "drop-path+wd0.3": ("stochastic depth 0.1 and weight decay 0.3", ["--drop-path", "0.1", "--weight-decay", "0.3"],
                        "test"),
    "drop-path+wd0.3-seed1": ("as drop-path+wd0.3, seed 1",
                              ["--drop-path", "0.1", "--weight-decay", "0.3", "--seed", "1"], "test"),
    "drop-path+wd0.3-seed2": ("as drop-path+wd0.3, seed 2",
                              ["--drop-path", "0.1", "--weight-decay", "0.3", "--seed", "2"], "test"),
    "crop0.8": ("random crops of 0.8-1 of the area (aspect 0.9-1.11)", ["--scale", "0.8,1", "--ratio", "0.9,1.11"],
                "test"),
    "crop0.6": ("random crops of 0.6-1 of the area (aspect 0.8-1.25)", ["--scale", "0.6,1", "--ratio", "0.8,1.25"],
                "test"),
    "randaug1": ("RandAugment, 1 op at magnitude 5", ["--randaug-ops", "1", "--randaug-magnitude", "5"], "test"),
    "drop-path+randaug2": ("stochastic depth 0.1 and RandAugment, 2 ops at magnitude 5",
                           ["--drop-path", "0.1", "--randaug-ops", "2", "--randaug-magnitude", "5"], "test"),
    "input96": ("input 96x96 instead of 64x64 (2.25x the compute)", ["--input-size", "96"], "test"),
    "epochs20": ("20 epochs", ["--epochs", "20"], "test"),
    "epochs30": ("30 epochs", ["--epochs", "30"], "test"),
    "train-images": ("the defaults on a folder of training images 0-7,999 instead", [], "train"),
}

# the settings run at three seeds (seeds 0, 1, 2 in order), compared seed by seed
SEEDS = {"defaults": ("defaults", "seed1", "seed2"),
         "drop-path+wd0.3": ("drop-path+wd0.3", "drop-path+wd0.3-seed1", "drop-path+wd0.3-seed2")}


def cost(name: str) -> float:
    """A trial's compute relative to the defaults': epochs x pixels."""
    flags = TRIALS[name][1]
    value = {flags[i]: flags[i + 1] for i in range(len(flags) - 1) if flags[i].startswith("--")}
    return int(value.get("--epochs", 10)) / 10 * (int(value.get("--input-size", 64)) / 64) ** 2


def run_trial(name: str, tmp: Path, folders: dict[str, Path]) -> dict:
    what, flags, source = TRIALS[name]
    out = tmp / f"run-{name}"
    cmd = [sys.executable, "-m", "convscope", "train", "--model", "convnext_atto", "--data", str(folders[source]),
           "--epochs", "10", "--out", str(out), "--progress", "plain", "--threads", "1", *flags]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"trial {name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return dict(name=name, what=what, flags=" ".join(flags), source=source, wall_s=wall,
                top1=[h["top1"] for h in history], ema_top1=[h.get("ema_top1") for h in history],
                train_loss=[h["train_loss"] for h in history])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", default=",".join(TRIALS), help="comma-separated trial names (default: all)")
    ap.add_argument("--parallel", type=int, default=2, help="trials run at once, one thread each (default 2)")
    ap.add_argument("--list", action="store_true", help="list the trials and exit")
    ap.add_argument("--out", default=None, help="write the result page here (markdown; a .json next to it)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other trials of --out's .json and replace or add only the ones run now")
    args = ap.parse_args()
    if args.list:
        for name, (what, flags, source) in TRIALS.items():
            print(f"{name:20s} {what}  [{' '.join(flags) or 'no flags'}; {source} images]")
        return 0
    names = [n for n in args.trials.split(",") if n]
    unknown = [n for n in names if n not in TRIALS]
    problem = (f"unknown trial(s) {unknown} (see --list)" if unknown else
               "--parallel must be >= 1" if args.parallel < 1 else
               "--merge needs --out (the page whose .json holds the other trials)" if args.merge and not args.out
               else "")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import cpu_name, load_average
    from small_data_defaults import write_folder

    load_before = load_average()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folders = {}
        for source in sorted({TRIALS[n][2] for n in names}):
            folders[source] = tmp / f"data-{source}"
            folders[source].mkdir()
            write_folder(folders[source], source)
        try:
            with ThreadPoolExecutor(args.parallel) as pool:   # the longest first, so that the pool ends together
                order = sorted(names, key=cost, reverse=True)
                done = dict(pool.map(lambda n: (n, run_trial(n, tmp, folders)), order))
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        results = [done[n] for n in names]
    total = time.perf_counter() - t0
    merged_note = ""
    if args.merge and args.out and Path(args.out).with_suffix(".json").is_file():
        kept = {r["name"]: r for r in json.loads(Path(args.out).with_suffix(".json").read_text())}
        kept.update({r["name"]: r for r in results})
        results = [kept[n] for n in TRIALS if n in kept]
        merged_note = (f"Merged: {', '.join(names)} run now ({total / 60:.1f} min, load average before "
                       f"{load_before}); the other rows are the earlier run's, kept from the .json.")
    page = render(results, args, load_before, load_average(), total, cpu_name(), merged_note)
    print(page)
    if args.out:
        Path(args.out).write_text(page)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


def render(results: list[dict], args, load_before: str, load_after: str, total: float, cpu: str,
           merged_note: str = "") -> str:
    longest = max(len(r["top1"]) for r in results)
    shown = [e for e in (1, 2, 3, 4, 5, 10, 20, 30) if e <= longest]
    head = "| trial | what changes | " + " | ".join(f"ep {e}" for e in shown) + " | last | best | last train loss |"
    rows = [head, "|---|---|" + "---:|" * (len(shown) + 3)]
    for r in results:
        cells = []
        for e in shown:
            if e > len(r["top1"]):
                cells.append("")
                continue
            ema = r["ema_top1"][e - 1]
            cells.append(f"{r['top1'][e - 1]:.2f}" + (f" ({ema:.2f})" if ema is not None else ""))
        rows.append(f"| {r['name']} | {r['what']} | " + " | ".join(cells)
                    + f" | {r['top1'][-1]:.2f} | {max(r['top1']):.2f} | {r['train_loss'][-1]:.3f} |")
    last = {r["name"]: r["top1"][-1] for r in results}
    ten = [r for r in results if len(r["top1"]) == 10 and r["source"] == "test"]
    lines = [
        "# The small-data folder: settings swept",
        "",
        f"`PYTHONPATH=src python benchmarks/small_data_sweep.py --parallel {args.parallel}"
        + (f" --trials {args.trials}" if args.trials != ",".join(TRIALS) else "")
        + (" --merge" if merged_note else "") + " --out PAGE`",
        "",
        "Every trial is `convscope train --model convnext_atto --data DIR --epochs 10 --threads 1` plus the flags "
        "named, on small_data_defaults' folder (8,000 28x28 grayscale PNGs, Fashion-MNIST test images 2,000-9,999; "
        "10% held out, 800 images) unless the trial says otherwise. Top-1 on the held-out images after the epochs "
        "shown; one held-out image is 0.125 points, and the binomial standard error at 87% is about 1.2 points.",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores, {args.parallel} trial(s) at a time on one thread each; "
        f"load average before {load_before}, after {load_after}; {total / 60:.1f} min in all.",
        *(["", merged_note] if merged_note else []),
        "",
        *rows,
        "",
    ]
    for base, group in SEEDS.items():
        seeds = [last[n] for n in group if n in last]
        if len(seeds) > 1:
            lines.append(f"{base} over {len(seeds)} seeds: median {statistics.median(seeds):.2f}% "
                         f"(range {min(seeds):.2f}-{max(seeds):.2f}).")
    pairs = list(zip(*SEEDS.values(), strict=False))   # (defaults, drop-path+wd0.3) per seed
    if all(a in last and b in last for b, a in pairs):
        lines.append("drop-path+wd0.3 minus the defaults, seed by seed: "
                     + ", ".join(f"{last[a] - last[b]:+.2f}" for b, a in pairs) + " points.")
    if ten:
        lasts = [r["top1"][-1] for r in ten]
        lines.append(f"All {len(ten)} ten-epoch trials on the benchmark's folder end between {min(lasts):.2f}% and "
                     f"{max(lasts):.2f}% (target >= 90%).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
