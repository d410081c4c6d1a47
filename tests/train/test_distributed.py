"""torchrun DDP on CPU (gloo): replicas stay identical and match one process on the same global batch; a dead
rank ends the job with a non-zero status instead of a hang."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import convscope
from convscope.train import TrainConfig, train

from ..conftest import SRC
from .test_resume import wait_for

pytestmark = pytest.mark.slow

# ConvNeXt has no BatchNorm (LayerNorm only), so per-rank batch statistics cannot make DDP differ from one
# process; augmentation is off (full-image crop, no flip, no mixing) and stochastic depth is 0, so the only
# randomness left is the init, which DDP broadcasts from rank 0 anyway.
BASE = TrainConfig(model="convnext_atto", model_kwargs=dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]),
                   data="synthetic", synthetic_size=128, synthetic_image_size=32, epochs=2, lr=3e-3,
                   warmup_epochs=0.5, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, drop_path=0.0,
                   label_smoothing=0.1, threads=1, progress="none", device="cpu")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1")


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "--monitor-interval=0.1", *args]


def _ddp_replicas(cfg: TrainConfig) -> tuple[dict, dict]:
    """Train `cfg` with 2 processes under torchrun; each rank's final weights (ddp_worker.py saves them)."""
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run(_torchrun(str(worker), json.dumps(cfg.to_dict())), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(load_file(str(Path(cfg.out) / f"rank{r}.safetensors")) for r in (0, 1))


def test_two_process_ddp_matches_one_process(tmp_path):
    ddp_cfg = dataclasses.replace(BASE, batch_size=8, out=str(tmp_path / "ddp"))
    r0, r1 = _ddp_replicas(ddp_cfg)
    single = train(dataclasses.replace(BASE, batch_size=16, out=str(tmp_path / "single")))
    ref = single.model.state_dict()
    assert len(single.history) == 2 and single.history[-1]["step"] == 16   # 2 epochs x 128 / 16
    worst = 0.0
    for k, v in ref.items():
        assert torch.equal(r0[k], r1[k]), f"replicas differ at {k}"
        assert r0[k].numpy().tobytes() == r1[k].numpy().tobytes()
        worst = max(worst, (r0[k] - v).abs().max().item())
    # Gradients averaged over ranks are summed in another order than one process sums them: equal to float
    # rounding (1.2e-7 measured), while 16 AdamW steps at lr 3e-3 move the weights by far more.
    print(f"DDP vs single-process: worst |diff| {worst:.3g}")
    assert worst < 1e-5, worst
    torch.manual_seed(BASE.seed)
    init = convscope.create_model("convnext_atto", num_classes=4, **BASE.model_kwargs).state_dict()
    assert max((init[k] - v).abs().max().item() for k, v in ref.items()) > 1e-2
    hist = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [8, 16]
    assert hist[-1]["train_loss"] == pytest.approx(single.history[-1]["train_loss"], rel=1e-4)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_dead_rank_ends_the_job_nonzero(tmp_path):
    out = tmp_path / "run"
    cmd = _torchrun("-m", "convscope", "train", "--model", "convnext_atto", "--model-kwargs",
                    json.dumps(BASE.model_kwargs), "--data", "synthetic", "--synthetic-size", "64",
                    "--epochs", "500", "--batch-size", "8", "--checkpoint-every", "2", "--threads", "1",
                    "--device", "cpu", "--progress", "none", "--dist-timeout", "30", "--out", str(out))
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert wait_for(lambda: any((out / "checkpoints").glob("step-*")), proc, timeout=120), \
            "training did not start: " + proc.stderr.read()[-2000:] if proc.poll() is not None else "timeout"
        workers = [p for p in _children(proc.pid) if "convscope" in _cmdline(p)]
        assert len(workers) == 2, [_cmdline(p) for p in _children(proc.pid)]
        victim = max(workers)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        rc = proc.wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc != 0
    print(f"job ended {elapsed:.1f} s after the kill, status {rc}")
    assert elapsed < 60
    for p in workers:   # no rank left behind
        assert not Path(f"/proc/{p}").exists() or "convscope" not in _cmdline(p)


@pytest.mark.parametrize("task", ["rotnet", "spark", "pixpro"])
def test_pretraining_under_torchrun(tmp_path, task):
    """`convscope pretrain --sync-bn` under torchrun: every weight and buffer ends bit-identical on both ranks
    (SparK's sparse and decoder BatchNorms and PixPro's projector BatchNorms take their statistics over both
    ranks' batches; without --sync-bn each rank keeps its own running statistics after the last forward; PixPro's
    momentum branch moves inside each rank's forward, from the same online weights); RotNet (nothing random at 32
    px without a flip; ConvNeXt has no BatchNorm) ends where one process with the global batch does, to float rounding.
    SparK's masks are drawn per rank, so its one-process run masks other cells and is not compared."""
    size = 32 if task == "rotnet" else 64   # SparK: a 2 x 2 deepest map to mask; PixPro: 2 x 2 cells to pair
    base = dataclasses.replace(BASE, task=task, synthetic_size=32, synthetic_image_size=size, epochs=1,
                               label_smoothing=0.0, scale=None, ratio=None, sync_bn=True)
    ddp_cfg = dataclasses.replace(base, batch_size=4, out=str(tmp_path / "ddp"))
    r0, r1 = _ddp_replicas(ddp_cfg)
    assert r0.keys() == r1.keys() and [k for k in r0 if not torch.equal(r0[k], r1[k])] == []
    assert any(k.endswith("running_var") for k in r0) == (task != "rotnet")
    assert task != "pixpro" or int(r0["updates"]) == 4   # the momentum branch moved once per step (32 / (2 x 4))
    assert (tmp_path / "ddp" / "encoder.safetensors").is_file()
    if task == "rotnet":
        single = train(dataclasses.replace(base, batch_size=8, out=str(tmp_path / "single"))).model.state_dict()
        assert max((r0[k] - v).abs().max().item() for k, v in single.items()) < 1e-5
