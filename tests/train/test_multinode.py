"""Several machines under torchrun (issue 25): two nodes of one process each on the loopback address train
exactly what one node of two processes trains; torchrun --max-restarts brings a job whose rank was killed back
from its last checkpoint (--resume auto) to the uninterrupted run's weights, bit for bit; a checkpoint resumes on
another number of processes with every sample of the epoch trained exactly once across the change."""
from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import convscope.train.callbacks as callbacks
from convscope.cli import main
from convscope.data.loaders import BatchedDataset
from convscope.data.transforms import TrainTransform
from convscope.train import TrainConfig, train
from convscope.train.distributed import _warn_shared_store

from .test_distributed import BASE, _env

pytestmark = pytest.mark.slow

WORKER = str(Path(__file__).with_name("elastic_worker.py"))
RUN = TrainConfig.from_dict(dict(BASE.to_dict(), batch_size=8, drop_path=0.1, hflip=0.5, scale=(0.5, 1.0),
                                 checkpoint_every=2, resume="auto", progress="plain"))   # 2 epochs of 8 steps


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--monitor-interval=0.1", *args]


def _run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=180)


def _bytes(path: Path) -> dict[str, bytes]:
    return {k: v.numpy().tobytes() for k, v in load_file(str(path)).items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """The final weights of RUN on one node of two processes, never interrupted."""
    cfg = dataclasses.replace(RUN, out=str(tmp_path_factory.mktemp("ref") / "run"))
    proc = _run(_torchrun("--standalone", "--nproc_per_node=2", WORKER, json.dumps(cfg.to_dict())))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (_bytes(Path(cfg.out) / f"rank{r}.safetensors") for r in range(2))
    assert r0 == r1
    return r0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_train_what_one_node_trains(reference, tmp_path):
    cfg = dataclasses.replace(RUN, out=str(tmp_path / "run"))
    port = _free_port()
    nodes = [subprocess.Popen(_torchrun("--nnodes=2", f"--node-rank={i}", "--nproc-per-node=1",
                                        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                        "--rdzv-id=loopback", "--local-addr=127.0.0.1", WORKER,
                                        json.dumps(cfg.to_dict())),
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [n.communicate(timeout=180) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
    assert [n.returncode for n in nodes] == [0, 0], [err[-2000:] for _, err in outs]
    for r in range(2):   # one process per node, and they were ranks 0 and 1 of one job of two
        assert _bytes(tmp_path / "run" / f"rank{r}.safetensors") == reference, r
    hist = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [8, 16]


def test_elastic_restart_resumes_from_the_last_checkpoint_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    cfg = dataclasses.replace(RUN, out=str(out))
    # rank 1 is SIGKILLed when checkpoint 6 is due: checkpoint 4 (epoch 1, step 4 of 8) is the last complete one.
    # The restarted workers need a rendezvous store of their own (pytorch issue 135712; docs/training.md).
    env = dict(_env(), TEST_KILL_AT_STEP="6", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    proc = _run(_torchrun("--standalone", "--nproc_per_node=2", "--max-restarts=1", WORKER,
                          json.dumps(cfg.to_dict())), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "exitcode: -9" in log, log[-3000:]   # torchrun saw the kill
    assert f"resumed from {out / 'checkpoints' / 'step-00000004'} (epoch 1, step 4/8)" in log, log[-3000:]
    for r in range(2):
        assert _bytes(out / f"rank{r}.safetensors") == reference, r
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [8, 16]


# -- another number of processes ---------------------------------------------------------------------------------
# No randomness in the model or the augmentation (BASE): what changes with the number of processes is then only
# the order in which gradients are summed. 128 images, a global batch of 16: 8 steps an epoch; checkpoints every 3
# steps; the first part stops when checkpoint 6 is due, so the run resumes from step 3 (epoch 1, step 3 of 8).
SIZES = dataclasses.replace(BASE, epochs=2, checkpoint_every=3, workers=0, progress="plain")


class _Stop(Exception):
    pass


def _record(monkeypatch, seen: list[dict]) -> None:
    """Record every training batch this process loads."""
    real = BatchedDataset.__getitem__

    def getitem(self, req):
        if isinstance(self.transform, TrainTransform):
            seen.append(dict(epoch=req.epoch, step=req.step, indices=list(req.indices)))
        return real(self, req)

    monkeypatch.setattr(BatchedDataset, "__getitem__", getitem)


def _one_process_until_step_6(monkeypatch, cfg: TrainConfig, seen: list[dict]) -> None:
    real = callbacks.save_checkpoint

    def save(loop, *args, **kwargs):
        if loop.global_step == 6:
            raise _Stop
        return real(loop, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(callbacks, "save_checkpoint", save)
        _record(m, seen)
        with pytest.raises(_Stop):
            train(cfg)


def _read_seen(directory: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(directory.glob("rank*.jsonl")) for line in f.read_text().splitlines()]


def _assert_each_sample_once_per_epoch(before: list[dict], before_batch: int, after: list[dict]) -> None:
    """The batches trained before the checkpoint (its epoch 0, optimizer steps 0-2: micro-batches < 3 per rank)
    and every batch after it: each of the 128 images exactly once in each epoch."""
    kept = [b for b in before if b["epoch"] == 0 and b["step"] < 3]
    assert len(kept) == 3 * 16 // before_batch
    for epoch in range(2):
        counts = Counter(i for b in kept + after if b["epoch"] == epoch for i in b["indices"])
        assert counts == Counter(range(128)), epoch


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, torch.Tensor]:
    """SIZES on one process with batch 16, never interrupted."""
    return train(dataclasses.replace(SIZES, batch_size=16, out=str(tmp_path_factory.mktemp("one") / "run")))\
        .model.state_dict()


def _assert_close_to(weights: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    worst = max((weights[k] - v).abs().max().item() for k, v in ref.items())
    print(f"resumed on another world size vs one process uninterrupted: worst |diff| {worst:.3g}")
    assert worst < 1e-5, worst


def test_two_processes_resume_on_one(one_process, monkeypatch, tmp_path):
    out, seen_dir = tmp_path / "run", tmp_path / "seen"
    cfg = dataclasses.replace(SIZES, batch_size=8, out=str(out))
    proc = _run(_torchrun("--standalone", "--nproc_per_node=2", WORKER, json.dumps(cfg.to_dict())),
                env=dict(_env(), TEST_KILL_AT_STEP="6", TEST_SEEN_DIR=str(seen_dir)))
    assert proc.returncode != 0
    state = json.loads((out / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["data"]["world_size"]) == (0, 3, 2)
    with pytest.raises(ValueError, match=r"global batch .* must stay the checkpoint's 16; this run has "
                                         r"8 x 1 x 1 = 8: pass --batch-size 16"):
        train(dataclasses.replace(cfg, resume=True))
    after: list[dict] = []
    _record(monkeypatch, after)
    result = train(dataclasses.replace(cfg, batch_size=16, resume=True))
    assert result.resumed_from == 3 and result.history[-1]["step"] == 16
    _assert_each_sample_once_per_epoch(_read_seen(seen_dir), 8, after)
    _assert_close_to(result.model.state_dict(), one_process)


def test_one_process_resumes_on_two(one_process, monkeypatch, tmp_path):
    out, seen_dir = tmp_path / "run", tmp_path / "seen"
    cfg = dataclasses.replace(SIZES, batch_size=16, out=str(out))
    before: list[dict] = []
    _one_process_until_step_6(monkeypatch, cfg, before)
    state = json.loads((out / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["data"]["world_size"]) == (0, 3, 1)
    resumed = dataclasses.replace(cfg, batch_size=8, resume=True)
    proc = _run(_torchrun("--standalone", "--nproc_per_node=2", WORKER, json.dumps(resumed.to_dict())),
                env=dict(_env(), TEST_SEEN_DIR=str(seen_dir)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the checkpoint was written by 1 process(es); this run has 2" in proc.stdout + proc.stderr
    _assert_each_sample_once_per_epoch(before, 16, _read_seen(seen_dir))
    r0, r1 = (load_file(str(out / f"rank{r}.safetensors")) for r in range(2))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    _assert_close_to(r0, one_process)


def test_resume_auto_starts_afresh_then_continues(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--model", "convnext_atto", "--model-kwargs", json.dumps(BASE.model_kwargs), "--data",
            "synthetic", "--synthetic-size", "64", "--epochs", "1", "--batch-size", "32", "--lr", "3e-3",
            "--threads", "1", "--progress", "plain", "--out", str(out)]
    assert main([*base, "--resume", "auto"]) == 0   # nothing to resume: a fresh run
    assert "resumed from" not in capsys.readouterr().out
    assert main([*base, "--resume", "auto"]) == 0   # a restart continues from the newest checkpoint
    assert f"resumed from {out / 'checkpoints' / 'step-00000002'}" in capsys.readouterr().out
    assert main([*base, "--batch-size", "16", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["convscope: error: the global batch (batch size x accum steps x processes) must stay the "
                   "checkpoint's 32; this run has 16 x 1 x 1 = 16: pass --batch-size 32"], err
    with pytest.raises(ValueError, match="resume must be true, false or 'auto'; got 'yes'"):
        train(dataclasses.replace(BASE, resume="yes", out=str(out)))


def test_a_restartable_job_on_the_shared_store_is_warned(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    with pytest.warns(UserWarning, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        _warn_shared_store()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")   # the store of its own: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_shared_store()
