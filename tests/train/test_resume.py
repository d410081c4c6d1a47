"""Kill a real training process with SIGKILL mid-epoch, resume it, and end with exactly the weights of a run
that was never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ..conftest import SRC

pytestmark = pytest.mark.slow

# Every source of randomness is on: stochastic depth, multi-sample dropout, random resized crop, flip,
# RandAugment, Mixup/CutMix, EMA, gradient clipping and accumulation, and a data-loader worker process.
ARGS = ["train", "--model", "convnext_atto", "--model-kwargs", '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}',
        "--data", "synthetic", "--synthetic-size", "192", "--epochs", "3", "--batch-size", "8", "--accum-steps", "2",
        "--lr", "2e-3", "--drop-path", "0.2", "--msd-samples", "2", "--ema-decay", "0.9", "--mixup", "0.8",
        "--cutmix", "1.0", "--randaug-ops", "2", "--scale", "0.3,1", "--clip-grad", "1.0", "--workers", "1",
        "--threads", "1", "--device", "cpu", "--checkpoint-every", "5", "--keep-last", "3", "--progress", "plain"]
STEPS_PER_EPOCH = 192 // 8 // 2


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "convscope", *ARGS, "--out", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll `cond` every 10 ms while `proc` runs; True once it holds."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(0.01)
    return False


def kill_after_a_checkpoint(victim: subprocess.Popen, ckpts: Path, timeout: float) -> None:
    """SIGKILL `victim` once its first checkpoint (`ckpts`/step-*) is written, while it still runs."""
    try:
        assert wait_for(lambda: any(ckpts.glob("step-*")), victim, timeout=timeout), victim.stderr.read()[-2000:]
        assert victim.poll() is None, "the run ended before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL


def _tensors(path: Path) -> dict[str, bytes]:
    return {k: v.numpy().tobytes() for k, v in load_file(str(path)).items()}


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    ref_proc = _start(tmp_path / "ref")                 # the uninterrupted run, alongside
    victim = _start(tmp_path / "killed")
    ckpts = tmp_path / "killed" / "checkpoints"
    kill_after_a_checkpoint(victim, ckpts, timeout=240)
    latest = max(ckpts.glob("step-*"))
    state = json.loads((latest / "state.json").read_text())
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < STEPS_PER_EPOCH   # killed mid-epoch

    resumed = _start(tmp_path / "killed", "--resume", "--workers", "0")   # worker count does not matter
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from {latest}" in out
    ref_out, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err[-3000:]

    # bitwise: the raw bytes of every tensor, not just equal values (-0.0 vs 0.0 would differ here)
    for name in ("last.safetensors", "best.safetensors"):
        a, b = _tensors(tmp_path / "ref" / name), _tensors(tmp_path / "killed" / name)
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), name
    final = f"step-{3 * STEPS_PER_EPOCH:08d}"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors"):
        a = _tensors(tmp_path / "ref" / "checkpoints" / final / name)
        b = _tensors(tmp_path / "killed" / "checkpoints" / final / name)
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), name
    strip = ("train_img_per_s", "epoch_time_s")
    hist = [[{k: v for k, v in json.loads(line).items() if k not in strip} for line in
             (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("ref", "killed")]
    assert hist[0] == hist[1] and len(hist[0]) == 3
