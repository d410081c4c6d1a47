"""Which settings train convnext_atto fastest on this CPU? The measurements behind the demo's choices.

One training step (forward, backward, AdamW) of convnext_atto with batch 128 of 1-channel images, for:
dtype fp32 / bf16 autocast, layout NCHW / channels-last, input 32 / 48, and torch threads 1 / 2 (2 with the
OpenMP default wait policy and with OMP_WAIT_POLICY=PASSIVE), the thread settings also with one busy process
(`while True: pass`) competing for a core, as on a shared machine. Each setting runs in its own process (the
OpenMP policy is fixed at start-up); settings alternate for ROUNDS rounds and the median step time of each is
reported, with the load average, since other processes on a shared machine change the answer.

    PYTHONPATH=src python benchmarks/train_settings.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BATCH = 128
SETTINGS = [  # (name, input, dtype, channels_last, threads, OMP_WAIT_POLICY, a busy process alongside)
    ("32px fp32 NCHW, 1 thread", 32, "fp32", False, 1, None, False),
    ("32px fp32 channels-last, 1 thread", 32, "fp32", True, 1, None, False),
    ("32px bf16 channels-last, 1 thread", 32, "bf16", True, 1, None, False),
    ("32px bf16 NCHW, 1 thread", 32, "bf16", False, 1, None, False),
    ("48px fp32 channels-last, 1 thread", 48, "fp32", True, 1, None, False),
    ("32px fp32 channels-last, 2 threads", 32, "fp32", True, 2, None, False),
    ("32px fp32 channels-last, 2 threads, OMP_WAIT_POLICY=PASSIVE", 32, "fp32", True, 2, "PASSIVE", False),
    ("32px fp32 channels-last, 1 thread, + 1 busy process", 32, "fp32", True, 1, None, True),
    ("32px fp32 channels-last, 2 threads, + 1 busy process", 32, "fp32", True, 2, None, True),
    ("32px fp32 channels-last, 2 threads, OMP_WAIT_POLICY=PASSIVE, + 1 busy process", 32, "fp32", True, 2,
     "PASSIVE", True),
]


def worker(size: int, dtype: str, channels_last: bool, steps: int) -> None:
    """Time `steps` training steps after two warm-up steps; print the times as JSON."""
    import torch
    import torch.nn.functional as F

    import convscope

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = convscope.create_model("convnext_atto", num_classes=10, in_chans=1).to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, 1, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (BATCH,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    print(json.dumps(times))


def run_setting(setting: tuple, steps: int) -> list[float]:
    _, size, dtype, cl, threads, policy, busy = setting
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--worker", str(size), dtype, str(int(cl)), str(steps)]
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600).stdout
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        size, dtype, cl, steps = sys.argv[2:6]
        worker(int(size), dtype, bool(int(cl)), int(steps))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    import torch
    from common import cpu_name, load_average

    times: dict[str, list[float]] = {s[0]: [] for s in SETTINGS}
    loads = []
    for r in range(args.rounds):
        for s in SETTINGS:
            times[s[0]] += run_setting(s, args.steps)
        loads.append(load_average())
        print(f"round {r + 1} (load average {loads[-1]}): "
              + ", ".join(f"{k}: {BATCH / statistics.median(v):.0f} img/s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = cpu_name()
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_settings.json").write_text(json.dumps(dict(step_times_s=times, load_average=loads,
                                                                 batch=BATCH, machine=machine), indent=1) + "\n")
    base = med[SETTINGS[1][0]]
    rows = "\n".join(f"| {k} | {v * 1e3:.0f} | {BATCH / v:.0f} | {base / v:.2f} |" for k, v in med.items())
    (RESULTS / "train_settings.md").write_text(f"""# Training-step speed of convnext_atto by setting

`PYTHONPATH=src python benchmarks/train_settings.py --rounds {args.rounds} --steps {args.steps}`

Machine: {machine}. Load average after each round: {'; '.join(loads)} (a shared machine: other processes
ran meanwhile). One step = forward, backward and AdamW on a batch of {BATCH} 1-channel images; median of
{args.rounds} x {args.steps} steps per setting, settings alternating, each in its own process.

| setting | step (ms) | images/s | speed vs fp32 channels-last 1 thread |
|---|---|---|---|
{rows}
""")
    print("\nmedian images/s: " + ", ".join(f"{k}: {BATCH / v:.0f}" for k, v in med.items()))


if __name__ == "__main__":
    main()
