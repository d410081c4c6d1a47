"""Checkpoints: atomic writes, keep-last-N, round trips of optimizer and RNG state, no unpickling on load."""
from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

import convscope
import convscope.files
from convscope.files import atomic_write_json, read_json
from convscope.models.source import load_model, read_meta, save_model_file
from convscope.train import checkpoint as ck
from convscope.train.checkpoint import (
    CheckpointManager,
    optimizer_from_tensors,
    optimizer_to_tensors,
    rng_state_json,
    set_rng_state_json,
)

META = dict(model="convnext_atto", model_kwargs=dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]), num_classes=3,
            in_chans=1, input_size=[32, 32], load_size=[28, 28], crop_pct=1.0, mean=[0.5], std=[0.25],
            class_names=["a", "b", "c"])


def _save(mgr: CheckpointManager, step: int, value: float):
    model = {"w": torch.full((3,), value)}
    return mgr.save(step, model=model, optimizer={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                    state={"epoch": 0, "step_in_epoch": step, "value": value}, meta=META,
                    rng={"torch.rank0": torch.get_rng_state()})


def test_atomic_json_failure_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"v": 1})

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(convscope.files.os, "fsync", crash)   # the new content is written, then the sync fails
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"v": 2, "pad": "x" * 100000})
    assert read_json(path) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]   # no temporary file left


def test_weights_failure_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "best.safetensors"
    save_model_file(path, {"w": torch.ones(4)}, META)
    import convscope.models.weights as w

    def partial_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 10)      # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(w, "save_file", partial_write)
    with pytest.raises(KeyboardInterrupt):
        save_model_file(path, {"w": torch.zeros(4)}, META)
    from safetensors.torch import load_file
    assert torch.equal(load_file(str(path))["w"], torch.ones(4))
    assert read_meta(path)["class_names"] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]


def test_checkpoint_failure_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    first = _save(mgr, 5, 1.0)

    def crash(*args, **kwargs):
        raise OSError("killed while writing state.json")

    monkeypatch.setattr(ck, "atomic_write_json", crash)   # after the weights files of step 10 were written
    with pytest.raises(OSError):
        _save(mgr, 10, 2.0)
    assert mgr.list() == [first]
    loaded = mgr.load()
    assert loaded.path == first and torch.equal(loaded.model["w"], torch.full((3,), 1.0))
    assert loaded.state["value"] == 1.0
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]


def test_a_crash_leaves_only_ignorable_partial_directories(tmp_path):
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    first = _save(mgr, 5, 1.0)
    partial = tmp_path / "checkpoints" / ".tmp-step-00000010-12345"   # what SIGKILL mid-save leaves
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"garbage")
    assert mgr.latest() == first and mgr.load().state["value"] == 1.0
    mgr.clean_partial()
    assert not partial.exists() and first.exists()


def test_keep_last_n(tmp_path):
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    for step in (3, 6, 9, 12, 15):
        _save(mgr, step, float(step))
    assert [p.name for p in mgr.list()] == ["step-00000012", "step-00000015"]
    assert mgr.load().state["value"] == 15.0
    _save(mgr, 15, 16.0)                       # the same step again replaces it
    assert [p.name for p in mgr.list()] == ["step-00000012", "step-00000015"]
    assert mgr.load().state["value"] == 16.0
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_optimizer_state_round_trip_continues_identically():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4))
    opt = torch.optim.AdamW([dict(params=[model[0].weight], weight_decay=0.1),
                             dict(params=[model[0].bias, *model[1].parameters()], weight_decay=0.0)], lr=1e-2)
    x = torch.randn(8, 5)
    for _ in range(3):
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    tensors, js = optimizer_to_tensors(opt.state_dict())
    import json
    js = json.loads(json.dumps(js))                       # it really is JSON
    twin = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4))
    twin.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW([dict(params=[twin[0].weight], weight_decay=0.1),
                              dict(params=[twin[0].bias, *twin[1].parameters()], weight_decay=0.0)], lr=1e-2)
    opt2.load_state_dict(optimizer_from_tensors({k: v.clone() for k, v in tensors.items()}, js))
    for m, o in ((model, opt), (twin, opt2)):
        m(x).square().sum().backward()
        o.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=False):
        assert torch.equal(a, b)


def test_rng_state_round_trip():
    np.random.seed(1)
    random.seed(2)
    state = rng_state_json()
    import json
    state = json.loads(json.dumps(state))
    a = (np.random.rand(3).tolist(), random.random())
    np.random.seed(99)
    random.seed(99)
    set_rng_state_json(state)
    assert (np.random.rand(3).tolist(), random.random()) == a


def test_loading_never_unpickles(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = convscope.create_model("convnext_atto", num_classes=3, in_chans=1, **META["model_kwargs"])
    mgr = CheckpointManager(tmp_path / "checkpoints")
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    opt.step()
    mgr.save(1, model=model.state_dict(), optimizer=opt.state_dict(), state={"epoch": 0}, meta=META,
             rng={"torch.rank0": torch.get_rng_state()}, tensors={"ema": model.state_dict()})
    save_model_file(tmp_path / "best.safetensors", model.state_dict(), META)

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = mgr.load()
    assert set(loaded.optimizer["state"]) == set(range(len(list(model.parameters()))))
    rebuilt, meta = load_model(tmp_path)                  # a run directory resolves to best.safetensors
    assert meta["class_names"] == ["a", "b", "c"] and meta["format"] == "convscope-weights/1"
    for (k, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values(), strict=False):
        assert torch.equal(a, b), k


def test_weights_without_metadata_are_refused(tmp_path):
    convscope.save_weights({"w": torch.ones(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="no convscope metadata"):
        read_meta(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="holds no"):
        load_model(tmp_path / "empty")
