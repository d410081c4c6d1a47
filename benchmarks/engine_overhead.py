"""How much does the training engine cost over a bare PyTorch loop?

Both train the same model (the demo's: convnext_atto, 1x32x32 input, 10 classes, batch 128, fp32, channels-last)
with AdamW and label-smoothed cross-entropy. The engine runs `convscope.train.train` for real on an in-memory
dataset with no augmentation (its loader still gathers and transforms every batch); the bare loop steps through
batches made beforehand. Each run trains two epochs of STEPS steps from a fresh model; the second epoch's
images/s is the figure (the first warms the kernels up). Runs alternate engine/bare ROUNDS times; the ratio of the
medians is reported.

    PYTHONPATH=src python benchmarks/engine_overhead.py [--rounds 5] [--steps 30] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MODEL, SIZE, BATCH, CLASSES = "convnext_atto", 32, 128, 10
RESULTS = Path(__file__).parent / "results"


def engine_run(steps: int, threads: int, tmp: Path, i: int) -> float:
    from convscope.train import TrainConfig, train

    cfg = TrainConfig(model=MODEL, data="synthetic", synthetic_size=steps * BATCH, synthetic_classes=CLASSES,
                      synthetic_image_size=SIZE, in_chans=1, epochs=2, batch_size=BATCH, lr=2e-3,
                      warmup_epochs=0.5, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, channels_last=True,
                      eval_limit=BATCH, threads=threads, progress="none", device="cpu", out=str(tmp / f"engine{i}"))
    result = train(cfg)
    return result.history[1]["train_img_per_s"]


def bare_run(steps: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    import torch
    import torch.nn.functional as F

    import convscope
    from convscope.train.recipe import param_groups

    torch.manual_seed(0)
    model = convscope.create_model(MODEL, num_classes=CLASSES, in_chans=1).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=2e-3)
    model.train()
    for _epoch in range(2):
        t0 = time.perf_counter()
        for x, y in batches:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
    return steps * BATCH / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo's setting: 1)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update benchmarks/results")
    args = ap.parse_args()
    import torch
    from common import cpu_name, load_average

    from convscope.data.datasets import synthetic

    torch.set_num_threads(args.threads)

    ds = synthetic(args.steps * BATCH, CLASSES, SIZE, 1, seed=0)
    mean, std = ds.channel_stats()
    x_all = ((ds.images.float() / 255 - mean[0]) / std[0]).contiguous(memory_format=torch.channels_last)
    batches = list(zip(x_all.split(BATCH), ds.labels.split(BATCH), strict=False))

    engine, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            engine.append(engine_run(args.steps, args.threads, Path(tmp), i))
            bare.append(bare_run(args.steps, batches))
            print(f"round {i + 1}: engine {engine[-1]:.0f} img/s, bare loop {bare[-1]:.0f} img/s", flush=True)
    e, b = statistics.median(engine), statistics.median(bare)
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
               f"torch {torch.__version__}; load average {load_average()} at the end")
    res = dict(model=MODEL, input=[1, SIZE, SIZE], batch=BATCH, dtype="fp32", channels_last=True,
               steps_per_run=args.steps, rounds=args.rounds, engine_img_per_s=engine, bare_img_per_s=bare,
               engine_median=e, bare_median=b, ratio=e / b, machine=machine)
    print(f"\nmedian: engine {e:.0f} img/s, bare loop {b:.0f} img/s, engine/bare = {e / b:.3f} ({machine})")
    if args.no_write:
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_overhead.json").write_text(json.dumps(res, indent=1) + "\n")
    rows = "\n".join(f"| {i + 1} | {x:.0f} | {y:.0f} | {x / y:.3f} |"
                     for i, (x, y) in enumerate(zip(engine, bare, strict=True)))
    command = (f"PYTHONPATH=src python benchmarks/engine_overhead.py --rounds {args.rounds} --steps {args.steps} "
               f"--threads {args.threads}")
    (RESULTS / "engine_overhead.md").write_text(f"""# Training engine overhead

`{command}`

Machine: {machine}.

{MODEL}, input 1x{SIZE}x{SIZE}, batch {BATCH}, fp32, channels-last, AdamW, label-smoothed cross-entropy. The
engine is `convscope.train.train` on an in-memory dataset (its loader gathers and transforms every batch in the
main process; schedule, timers and metrics on); the bare loop steps through prepared batches. Training images/s
of the second of two epochs of {args.steps} steps each, fresh model per run, runs alternating.

| round | engine (img/s) | bare loop (img/s) | ratio |
|---|---|---|---|
{rows}

**Median: engine {e:.0f} img/s, bare loop {b:.0f} img/s, engine / bare = {e / b:.3f}.**
""")


if __name__ == "__main__":
    main()
