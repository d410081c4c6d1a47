"""The main job, end to end on this machine: train a small model from the zoo on Fashion-MNIST, evaluate it, and
show where the time went: in the training step (the engine's timers) and layer by layer in the trained model's
forward pass (the efficiency lab's waterline profile, also written as an HTML report).

    make demo            (or: PYTHONPATH=src python examples/demo.py [--threads N])

The same run from the command line:

    convscope train --model convnext_atto --data fashion-mnist --epochs 7 --batch-size 128 --lr 2e-3 \\
        --warmup-epochs 0.3 --scale 1,1 --ratio 1,1 --channels-last --threads 1 --time-budget 9m20s --out runs/demo

The whole demo must end within 10 minutes on any 2-core machine: training gets a time budget (what is left of
9m30s when it starts, the last 30 s being the layer profile's), and fits its schedule to the speed it measures in
its first steps: all 7 epochs where they fit (the README's machine: about 5m30s), fewer, with the cosine schedule
ending on time, where they do not. On a CPU with AMX-BF16 (Intel Xeon, 4th generation on) the demo first times its
training step in fp32 and in bf16 autocast and keeps bf16 only if it is measurably faster (`choose_amp`); elsewhere
it trains in fp32 without measuring.
"""
from __future__ import annotations

import time

T0 = time.perf_counter()   # the wall clock includes importing torch and reading the data

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

import convscope  # noqa: E402
from convscope.analysis.hardware import machine_info  # noqa: E402
from convscope.train import TrainConfig, train  # noqa: E402
from convscope.train.report import format_duration  # noqa: E402

T_IMPORTED = time.perf_counter()
TARGET_TOP1 = 90.0
BUDGET_S = 600
PROFILE_RESERVE_S = 30   # the layer profile and its report after training (~15 s on the README's machine)
REPORT = "out/demo-report.html"

# Chosen by measurement on this 2-core CPU (README, "Training"): convnext_atto as registered, fed the 28x28
# grayscale images at 32x32 (its smallest input) with in_chans=1, fp32 in channels-last (bf16 autocast was not
# faster at these tiny feature maps), every core when the machine is otherwise idle and one torch thread when it is
# not (two threads are 1.5-1.7x faster on an idle 2-core machine but 0.6x as fast, or far worse, as soon as
# another process wants a core; see `choose_threads`), the in-memory loader in the main process. Seven epochs of
# whole images with random flips: random crops cost more accuracy than they give back in so short a schedule.
CONFIG = TrainConfig(
    model="convnext_atto", data="fashion-mnist", out="runs/demo",
    epochs=7, batch_size=128, lr=2e-3, warmup_epochs=0.3, weight_decay=0.05, label_smoothing=0.1,
    scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, amp="fp32", channels_last=True, threads=1, workers=0, seed=0,
)


def busy_cores(seconds: float = 1.0) -> float | None:
    """How many cores other processes kept busy over `seconds` (from /proc/stat; None where it cannot be read)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]   # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cores = len(os.sched_getaffinity(0))
    return cores * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def choose_threads() -> tuple[int, str]:
    """Every core this process may use when nothing else is running, else one thread.

    Measured on the 2-core machine (benchmarks/results/train_settings.md): two threads train 1.5-1.7x faster than
    one on an idle machine but fall to 0.6x as soon as one other busy process shares it, while one thread keeps
    0.97x. A process that starts after this check can still slow a multi-threaded run: pass --threads 1 then."""
    cores = len(os.sched_getaffinity(0))
    busy = busy_cores()
    if cores > 1 and busy is not None and busy < 0.25:
        return cores, f"the machine is idle ({busy:.2f} cores busy)"
    why = "one core" if cores == 1 else ("load unknown" if busy is None else f"{busy:.2f} cores busy elsewhere")
    return 1, why


AMX_MARGIN = 0.95   # bf16 autocast is kept only when its step takes under 95% of fp32's (timing noise aside)


def step_seconds(amp: str, threads: int, batch: int = CONFIG.batch_size, side: int = 32, steps: int = 4,
                 rounds: int = 3) -> float:
    """Median seconds per training step of the demo model (fresh, fp32 weights, channels-last, AdamW) at the demo's
    batch of 1x`side`x`side` images (32: convnext_atto's minimum, the size Fashion-MNIST trains at), with bf16
    autocast or without: `rounds` timings of `steps` steps each after two warm-up steps."""
    import statistics

    import torch.nn.functional as F

    from convscope.models import create_model

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = create_model(CONFIG.model, num_classes=10, in_chans=1).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, 1, side, side).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(steps):
                step()
            times.append((time.perf_counter() - t) / steps)
        return statistics.median(times)
    finally:
        torch.set_num_threads(previous)


def choose_amp(threads: int, flags: frozenset[str] | None = None, measure=None) -> tuple[str, str]:
    """fp32, or bf16 autocast where the CPU has AMX-BF16 and the demo's training step measures faster with it.

    Without AMX nothing is measured: on the README's machine (AMD EPYC, AVX-512 with BF16, no AMX) fp32
    channels-last was the faster (benchmarks/results/train_settings.md). AMX's bf16 tile units may change that for
    the pointwise convolutions, so there both are timed on the demo's own step (`measure(amp)`: seconds per step),
    fp32 then bf16 then fp32 again, and bf16 is kept only if it takes under AMX_MARGIN of fp32's time."""
    if flags is None:
        from convscope.deploy.machine import cpu_isa
        flags = frozenset(cpu_isa()["flags"])
    if not {"amx_bf16", "amx_tile"} <= flags:
        return "fp32", "fp32 (no AMX-BF16 on this CPU; nothing measured)"
    measure = measure or (lambda amp: step_seconds(amp, threads))
    fp32_a = measure("fp32")
    bf16 = measure("bf16")
    fp32 = min(fp32_a, measure("fp32"))
    faster = bf16 < AMX_MARGIN * fp32
    return ("bf16" if faster else "fp32"), (f"{'bf16 autocast' if faster else 'fp32'} (AMX-BF16: measured "
                                           f"{1000 * fp32:.0f} ms per fp32 step, {1000 * bf16:.0f} ms per bf16 step)")


def main() -> int:
    ap = argparse.ArgumentParser(description="train convnext_atto on Fashion-MNIST and show where the time went")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: every core if the machine is idle, else 1)")
    ap.add_argument("--out", default=CONFIG.out, help=f"run directory, emptied first (default: {CONFIG.out})")
    ap.add_argument("--report", default=REPORT, help=f"the HTML layer report (default: {REPORT})")
    ap.add_argument("--budget", type=float, default=BUDGET_S,
                    help=f"seconds the whole demo may take (default: {BUDGET_S}); training gets what is left of it "
                         f"less {PROFILE_RESERVE_S} s for the profile")
    ap.add_argument("--smoke", action="store_true",
                    help="a one-epoch run on 1,024 training and 512 test images that checks every step of the demo "
                         "works, not its accuracy (tests/test_demo.py)")
    args = ap.parse_args()
    from convscope.extras import available, missing_message
    if not available("matplotlib"):   # said now, not after ten minutes of training
        print(f"note: {missing_message('matplotlib', 'the HTML report')}; the demo runs without it")
        args.report = None
    threads = args.threads
    why = "--threads"
    if threads is None:
        threads, why = choose_threads()
    elif threads < 1:
        ap.error(f"--threads must be >= 1; got {threads}")
    amp, amp_why = choose_amp(threads)
    cfg = dataclasses.replace(CONFIG, threads=threads, out=args.out, amp=amp)
    if args.smoke:
        cfg = dataclasses.replace(cfg, epochs=1, data_limit=1024, eval_limit=512)
    # what is left of the 10 minutes, less the profile's share, measured from the process start
    left = args.budget - PROFILE_RESERVE_S - (time.perf_counter() - T0)
    if left <= 0:
        ap.error(f"--budget {args.budget:g} leaves no time to train")
    cfg = dataclasses.replace(cfg, time_budget=left)
    print(f"convscope {convscope.__version__}, torch {torch.__version__}, {machine_info()['cpu_model']} "
          f"({os.cpu_count()} cores), {cfg.threads} torch thread(s): {why}; {amp_why}\n")
    shutil.rmtree(cfg.out, ignore_errors=True)   # the demo starts afresh each time
    result = train(cfg)
    wall = time.perf_counter() - T0

    f = result.final
    print(f"\ntest accuracy: top-1 {f['top1']:.2f}%, top-5 {f['top5']:.2f}% on {f['n']:,} Fashion-MNIST test images")
    per_class = [row[i] / max(sum(row), 1) * 100 for i, row in enumerate(f["confusion"])]
    print("per class: " + ", ".join(f"{c} {a:.0f}%" for c, a in zip(f["class_names"], per_class, strict=True)))

    t = result.timers
    steps = {k: t.get(k, 0.0) for k in ("data", "forward", "backward", "optimizer")}
    train_s = sum(steps.values())
    print(f"\nwhere the time went ({format_duration(wall)} wall clock, "
          f"{result.train_images / max(train_s, 1e-9):.0f} training images/s):")
    print(f"  {'start-up (imports)':<28}{T_IMPORTED - T0:7.1f} s")
    print(f"  {'reading data, building model':<28}{t.get('setup', 0.0):7.1f} s")
    for k, v in steps.items():
        label = {"data": "data loading + augmentation"}.get(k, k)
        print(f"  {label:<28}{v:7.1f} s  ({100 * v / max(train_s, 1e-9):4.1f}% of training steps)")
    print(f"  {'evaluation':<28}{t.get('eval', 0.0):7.1f} s")
    print(f"  {'checkpoints':<28}{t.get('checkpoint', 0.0):7.1f} s")
    print(f"\nrun directory: {os.path.abspath(cfg.out)} (metrics.jsonl, curves.png, best.safetensors)")

    ok_acc, ok_time = f["top1"] >= TARGET_TOP1, wall <= args.budget
    if not args.smoke:
        print(f"\ntarget: top-1 >= {TARGET_TOP1:.0f}% in <= {format_duration(args.budget)}: top-1 {f['top1']:.2f}% "
              f"({'met' if ok_acc else 'NOT met'}), {format_duration(wall)} ({'met' if ok_time else 'NOT met'})")

    size = (cfg.batch_size, result.meta["in_chans"], *result.meta["input_size"])
    profile_trained(result.model, size, cfg.threads, args.report)
    optimize_trained(cfg.out, cfg.batch_size, args.smoke)  # the deploy step (convscope.deploy), last
    return 0 if ok_acc or args.smoke else 1


def profile_trained(model: torch.nn.Module, input_size: tuple[int, ...], threads: int, report: str | None) -> None:
    """Where the forward time goes, layer by layer, at the training batch: measured time per module against the
    waterline bound max(FLOPs / peak, bytes / bandwidth) under this machine's measured ceilings."""
    from convscope.analysis import profile_layers

    print(f"\nper-layer waterline of the trained model, inference forward at {'x'.join(map(str, input_size))}, "
          f"fp32 channels-last, {threads} thread(s) (this machine's ceilings are measured once and cached):")
    prof = profile_layers(model.eval(), input_size, channels_last=True, threads=threads, repeats=5)
    print(prof.summary())
    print(f"\n{prof.group_table('kind')}")
    if report is None:
        return
    from convscope.analysis.report import profile_report, write_report

    path = write_report(profile_report(prof, command="make demo"), report)
    print(f"\nwrote {path} (roofline and efficiency-gap charts, every layer's time, bound and efficiency)")


# -- deploy step (convscope.deploy): optimise the trained model for inference on this machine --------------------------
def optimize_trained(run_dir: str, batch: int, smoke: bool) -> None:
    """`convscope optimize RUN_DIR --data fashion-mnist --batch N --max-drop 1.0`: every form that can help here,
    measured, the fastest within one top-1 point written with its recipe (the smoke run tries the exact steps only).
    """
    import itertools

    from convscope.deploy.optimize import eval_loader, load_source, optimize, write_result
    from convscope.deploy.quantize import available

    steps = ("prepare", "channels_last") if smoke else \
        ("prepare", "channels_last", "bf16", "compile") + (("int8",) if available() else ()) + ("threads",)
    model, src = load_source(run_dir)
    size = (batch, *src["chw"])
    loader = list(eval_loader(src, "fashion-mnist", batch, 256 if smoke else 2000))
    calibration = list(itertools.islice(eval_loader(src, "fashion-mnist", batch, 8 * batch, split="train"), 8))
    print(f"\ndeploy: optimising the trained model at {'x'.join(map(str, size))} (top-1 on "
          f"{sum(len(y) for _, y in loader)} test images, budget 1 point; steps {', '.join(steps)})")
    result = optimize(model, size, steps=steps, loader=loader, calibration=calibration, max_drop=1.0,
                      repeats=3 if smoke else 10)
    best, base = result.best, result.baseline
    out = os.path.join(run_dir, "optimized")
    path, _ = write_result(result, out, run_dir, size, "fashion-mnist")
    print(f"\nfastest within the budget: {best.form.describe()}, {base.median_ms / best.median_ms:.2f}x the eager "
          f"fp32 model, top-1 {best.top1:.2f} (fp32 {base.top1:.2f}); recipe {path} (convscope deploy {path})")


if __name__ == "__main__":
    sys.exit(main())
