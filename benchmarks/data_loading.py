"""How fast can Fashion-MNIST batches be made, and how should the loader be set up on this 2-core CPU?

1. Loader alone (no model): the demo's train transform (random resized crop 0.6-1 + flip, 28 -> 32, normalise)
   as one batch operation on the in-memory uint8 tensor (convscope's Loader) with 0, 1 and 2 worker processes,
   against the classic per-image route (a torch DataLoader calling the same transform image by image, then
   collating) with 0 and 2 workers.
2. Training (model included): the engine's images/s with the loader in the main process or in one worker
   process (on the core the model's single thread leaves free).

Everything runs with one torch thread in the main process, the demo's setting (benchmarks/train_settings.py shows
why); runs alternate; medians are reported. pin_memory stays off: it only helps copies to a GPU.

    PYTHONPATH=src python benchmarks/data_loading.py [--rounds 3] [--data DIR]

--data: a directory of Fashion-MNIST idx files (default: Debian's dataset-fashion-mnist, `make data`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BATCH = 128
N_BATCHES = 60


class PerImage:
    """The classic route: one image at a time through the transform, collated by the DataLoader (a map-style
    dataset: __len__ and __getitem__)."""

    def __init__(self, ds, tf):
        import torch

        self.ds, self.tf, self.make_generator = ds, tf, torch.Generator

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        g = self.make_generator().manual_seed(i)
        return self.tf(x.unsqueeze(0), g)[0], y


def loader_rate(make, n_batches: int) -> float:
    it = iter(make())
    next(it)   # start-up (worker processes) not counted
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * BATCH / (time.perf_counter() - t0)


# torch threads, loader workers (threads: see benchmarks/train_settings.py)
ENGINE_SETUPS = {"1 thread, loader in the main process": (1, 0), "1 thread, loader in 1 worker process": (1, 1)}


def engine_rate(threads: int, workers: int, tmp: str, i: int, data: str) -> float:
    from convscope.train import TrainConfig, train

    cfg = TrainConfig(model="convnext_atto", data=data, data_limit=20 * BATCH, eval_limit=BATCH,
                      epochs=2, batch_size=BATCH, lr=2e-3, hflip=0.5, scale=(0.6, 1.0), channels_last=True,
                      workers=workers, threads=threads, progress="none", device="cpu",
                      out=f"{tmp}/t{threads}w{workers}_{i}")
    return train(cfg).history[1]["train_img_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=None, metavar="DIR",
                    help="Fashion-MNIST idx files (default: /usr/share/datasets/fashion-mnist, `make data`)")
    args = ap.parse_args()
    import torch
    from common import cpu_name, load_average
    from torch.utils.data import DataLoader

    from convscope.data.datasets import fashion_mnist
    from convscope.data.loaders import Loader
    from convscope.data.transforms import TrainTransform

    torch.set_num_threads(1)
    ds = fashion_mnist(args.data, split="train")
    mean, std = ds.channel_stats()
    tf = TrainTransform(32, mean, std, scale=(0.6, 1.0))
    setups = {
        "batched, main process": lambda: Loader(ds, tf, BATCH, train=True),
        "batched, 1 worker": lambda: Loader(ds, tf, BATCH, train=True, workers=1),
        "batched, 2 workers": lambda: Loader(ds, tf, BATCH, train=True, workers=2),
        "per-image, main process": lambda: DataLoader(PerImage(ds, tf), BATCH, shuffle=True),
        "per-image, 2 workers": lambda: DataLoader(PerImage(ds, tf), BATCH, shuffle=True, num_workers=2,
                                                   persistent_workers=True),
    }
    rates = {k: [] for k in setups}
    engine = {k: [] for k in ENGINE_SETUPS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k, make in setups.items():
                n = N_BATCHES if k.startswith("batched") else N_BATCHES // 4
                rates[k].append(loader_rate(make, n))
            for k, (threads, workers) in ENGINE_SETUPS.items():
                engine[k].append(engine_rate(threads, workers, tmp, r, args.data or "fashion-mnist"))
            print(f"round {r + 1}: loader " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
                  + "; training " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in engine.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    eng = {k: statistics.median(v) for k, v in engine.items()}
    cpu = cpu_name()
    machine = f"{cpu}, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_loading.json").write_text(json.dumps(dict(loader_img_per_s=rates, training_img_per_s=engine,
                                                               machine=machine), indent=1) + "\n")
    rows = "\n".join(f"| {k} | {v:,.0f} |" for k, v in med.items())
    eng_rows = "\n".join(f"| {k} | {v:,.0f} |" for k, v in eng.items())
    (RESULTS / "data_loading.md").write_text(f"""# Loading Fashion-MNIST batches

`PYTHONPATH=src python benchmarks/data_loading.py --rounds {args.rounds}`

Machine: {machine}. Medians of {args.rounds} alternating rounds. Load average at the end: {load_average()}.

Loader alone: batches of {BATCH} through the demo-style train transform (random resized crop 0.6-1, flip,
28 -> 32, normalise), after the first batch.

| loader | images/s |
|---|---|
{rows}

Training convnext_atto at 32x32, batch {BATCH}, fp32, channels-last (second of two 20-step epochs):

| engine setup | training images/s |
|---|---|
{eng_rows}
""")
    print(f"\nmedians: {med}; training {eng}")


if __name__ == "__main__":
    main()
