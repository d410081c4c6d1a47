"""The demo's training run as a slower 2-core machine would run it: `make demo`'s recipe (examples/demo.py CONFIG)
trained for exactly the steps its time budget plans on a machine that trains at --img-per-s, and tested on the
10,000 Fashion-MNIST test images.

    PYTHONPATH=src python benchmarks/demo_slow_machine.py [--img-per-s 670] [--startup-s 15] [--threads N]
        [--out PAGE.md]

On the demo's run, `--time-budget` (convscope/train/budget.py) times the first steps and plans the optimizer steps
that fit in what is left of 9m30s, evaluations included; the cosine schedule then ends on that step. Here the timing
is replaced by arithmetic: the budget's own `fit_steps` is asked with a step time of batch / --img-per-s and a clock
that reads --startup-s (the seconds from the demo's start to its first training step on that machine) plus the
steps taken at that speed. Everything else is the real run: the same seed, batches and schedule, so the top-1 is
the one that machine would reach (only the wall clock is this machine's). The default speed is the engine's
measurement on an Intel Xeon with 2 cores (AMX; the README's figure); the run here is a simulation of its step
count, not a measurement on that machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUDGET_S, PROFILE_RESERVE_S = 600, 30   # examples/demo.py's BUDGET_S and PROFILE_RESERVE_S


def planned_steps(img_per_s: float, startup_s: float, cfg, steps_per_epoch: int, eval_images: int) -> int:
    """The total optimizer steps the time budget plans on a machine training at img_per_s (see the module text)."""
    from convscope.train.budget import TimeBudget

    budget = simulated_budget_class(img_per_s, startup_s)(
        cfg.time_budget, 0.0, steps_per_epoch, cfg.epochs, cfg.batch_size, eval_images, cfg.eval_every,
        round(cfg.warmup_epochs * steps_per_epoch))
    total = None
    done = 0
    while total is None:
        done += 1
        total = budget.after_step(done)
    assert isinstance(budget, TimeBudget)
    return total


def simulated_budget_class(img_per_s: float, startup_s: float):
    """A TimeBudget whose step time is batch / img_per_s and whose clock is startup_s plus the steps taken."""
    from convscope.train.budget import TimeBudget

    class SimulatedBudget(TimeBudget):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.done = 0

        def elapsed(self) -> float:
            # the budget counts from train()'s start; the demo gave it what was left after its own start-up
            return startup_s - (DEMO_BUDGET_S - PROFILE_RESERVE_S - self.seconds) + self.done * self.sim_step_s

        @property
        def sim_step_s(self) -> float:
            return self.images_per_step / img_per_s

        def after_step(self, done: int) -> int | None:
            self.done = done
            self._n += 1
            if self._n < self.probe_steps + 2:
                return None
            self.step_s = self.sim_step_s
            return self.fit_steps(done, self.step_s)

        def refit(self, done: int, planned: int, step_s: float) -> int:
            return planned   # the simulated machine keeps its pace

    return SimulatedBudget


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--img-per-s", type=float, default=670.0, help="training images/s of the simulated machine")
    ap.add_argument("--startup-s", type=float, default=15.0,
                    help="seconds from the demo's start to its first training step on the simulated machine")
    ap.add_argument("--threads", type=int, default=None, help="torch threads here (default: every core)")
    ap.add_argument("--run-dir", default="runs/demo-slow", help="run directory (emptied first)")
    ap.add_argument("--plan-only", action="store_true", help="print the planned steps and stop")
    ap.add_argument("--out", default=None, help="write the result page here (markdown)")
    args = ap.parse_args()
    for name in ("img_per_s", "startup_s"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0; got {getattr(args, name)}")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "examples"))
    import shutil

    import torch
    from common import cpu_name, load_average
    from demo import CONFIG

    from convscope.deploy.machine import cpu_isa
    from convscope.train import budget, train

    threads = args.threads or len(os.sched_getaffinity(0))
    left = DEMO_BUDGET_S - PROFILE_RESERVE_S - args.startup_s
    if left <= 0:
        ap.error(f"--startup-s {args.startup_s:g} leaves no time to train")
    cfg = dataclasses.replace(CONFIG, out=args.run_dir, threads=threads, time_budget=left, progress="plain")
    steps_per_epoch, eval_images = 60_000 // cfg.batch_size, 10_000
    steps = planned_steps(args.img_per_s, args.startup_s, cfg, steps_per_epoch, eval_images)
    images = steps * cfg.batch_size
    print(f"at {args.img_per_s:g} img/s with {args.startup_s:g} s of start-up, the demo's time budget plans "
          f"{steps} steps ({steps / steps_per_epoch:.2f} epochs, {images:,} training images)")
    if args.plan_only:
        return 0
    shutil.rmtree(cfg.out, ignore_errors=True)
    budget.TimeBudget = simulated_budget_class(args.img_per_s, args.startup_s)
    load_before = load_average()
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    f = result.final
    trained = result.train_images
    t = result.timers
    train_s = sum(t.get(k, 0.0) for k in ("data", "forward", "backward", "optimizer"))
    page = "\n".join([
        "# The demo's recipe at a slower machine's step count",
        "",
        f"`make demo`'s training run (examples/demo.py `CONFIG`: {cfg.model}, batch {cfg.batch_size}, lr "
        f"{cfg.lr:g}, warm-up {cfg.warmup_epochs:g} epochs, at most {cfg.epochs} epochs, fp32 channels-last) "
        f"trained for the steps its time budget plans on a 2-core machine that trains at {args.img_per_s:g} "
        f"images/s and reaches its first training step {args.startup_s:g} s after the demo starts; tested on the "
        "10,000 Fashion-MNIST test images.",
        "",
        "Reproduce: `PYTHONPATH=src python benchmarks/demo_slow_machine.py "
        f"{f'--threads {args.threads} ' if args.threads else ''}--out benchmarks/results/demo_slow_machine.md`",
        "",
        "What is simulated: the speed only. The budget (convscope/train/budget.py) is given the step time "
        f"{cfg.batch_size} / {args.img_per_s:g} s and a clock that advances by it per step instead of timing "
        "this machine; it plans with its own arithmetic (evaluations at its conservative cost, its 97% safety "
        "margin). The run then trains those steps here, deterministically (seed 0), so the accuracy is the one "
        f"that machine would reach; {args.img_per_s:g} img/s is the engine's measurement on an Intel Xeon with 2 "
        "cores and AMX (the README's figure), a machine we have not run on.",
        "",
        f"Machine here: {cpu_name()}, {cpu_isa()['summary']}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} thread(s); load average before {load_before}, after {load_average()} (1/5/15 min).",
        "",
        f"Plan: {steps} optimizer steps = {steps / steps_per_epoch:.2f} epochs = {images:,} training images "
        f"(at {args.img_per_s:g} img/s: {images / args.img_per_s:.0f} s of training steps).",
        "",
        "| epoch | steps | train loss | top-1 | lr at the epoch's end |",
        "|---|---|---|---|---|",
        *[f"| {h['epoch']} | {h['step']} | {h['train_loss']:.4f} | {h.get('top1', float('nan')):.2f}% | "
          f"{h['lr']:.2e} |" for h in result.history],
        "",
        f"Result: top-1 {f['top1']:.2f}%, top-5 {f['top5']:.2f}% on {f['n']:,} test images after {trained:,} "
        f"training images (target >= 90%). Here: {trained / max(train_s, 1e-9):.0f} training img/s, "
        f"{wall / 60:.1f} min for the run (this machine's wall clock, not the simulated one's).",
        "",
    ])
    print(page)
    if args.out:
        Path(args.out).write_text(page)
    return 0 if f["top1"] >= 90.0 else 1


if __name__ == "__main__":
    sys.exit(main())
