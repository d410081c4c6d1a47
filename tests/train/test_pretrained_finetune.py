"""`convscope train --pretrained ... --layer-decay ... --head-lr-scale ...`: fine-tuning released weights with
layer-wise learning rates; the option errors are one line, exit 2, before any work."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load as load_file_bytes
from safetensors.torch import load_file

from convscope import create_model
from convscope.cli import main
from convscope.models import save_weights
from convscope.train import TrainConfig, train
from convscope.train.recipe import WarmupCosine, layer_ids, param_groups

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])


def _config(out, **kw):
    base = dict(model="convnext_atto", model_kwargs=TINY, data="synthetic", synthetic_size=64, epochs=1,
                batch_size=32, lr=1e-3, warmup_epochs=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, drop_path=0.0,
                progress="none", device="cpu", threads=1, out=str(out))
    return TrainConfig(**{**base, **kw})


def _released(tmp_path, num_classes=10):
    torch.manual_seed(5)
    model = create_model("convnext_atto", num_classes=num_classes, **TINY)
    return model, save_weights(model, tmp_path / "released.safetensors")


def test_pretrained_starts_from_the_weights_with_a_new_head(tmp_path, caplog):
    released, path = _released(tmp_path)
    with caplog.at_level(logging.WARNING):
        result = train(_config(tmp_path / "ft", pretrained=str(path), lr=1e-6))
    notes = [r.getMessage() for r in caplog.records if "classifier re-initialised" in r.getMessage()]
    assert len(notes) == 1 and "for 4 classes" in notes[0], notes
    before, after = released.state_dict(), result.model.state_dict()
    assert after["head.fc.weight"].shape == (4, 32) and before["head.fc.weight"].shape == (10, 32)
    body = [k for k in before if not k.startswith("head.fc.")]
    assert max((after[k] - before[k]).abs().max().item() for k in body) < 1e-4


def test_layer_decay_run_records_its_scales(tmp_path):
    _, path = _released(tmp_path)
    result = train(_config(tmp_path / "ld", pretrained=str(path), layer_decay=0.5, head_lr_scale=10.0))
    assert result.model.state_dict()["head.fc.weight"].shape == (4, 32)
    saved = json.loads((tmp_path / "ld" / "config.json").read_text())
    assert (saved["pretrained"], saved["layer_decay"], saved["head_lr_scale"]) == (str(path), 0.5, 10.0)


def test_schedule_applies_each_groups_scale():
    model = create_model("convnext_atto", num_classes=4, **TINY)
    groups = param_groups(model, 0.05, layer_decay=0.5, head_lr_scale=10.0)
    ids, head = layer_ids(model)
    last = max(ids.values())
    opt = torch.optim.AdamW(groups, lr=1.0)
    schedule = WarmupCosine(opt, 1e-3, 0.0, 0, 10)
    schedule.step(3)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            want = schedule.lr_at(3) * 0.5 ** (last - ids[n]) * (10.0 if n in head else 1.0)
            assert g["lr"] == pytest.approx(want, rel=1e-12), n
    assert ids["stem.0.weight"] == 0 and last == 5     # stem, 4 blocks, head
    assert {n for n in head} == {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--layer-decay", "0"], "layer_decay must be in (0, 1]; got 0.0"),
    (["--layer-decay", "1.5"], "layer_decay must be in (0, 1]; got 1.5"),
    (["--layer-decay", "nan"], "layer_decay must be a finite number"),
    (["--head-lr-scale", "0"], "head_lr_scale must be > 0"),
    (["--pretrained", "x.safetensors", "--init-from", "y.safetensors"], "pass one of them"),
])
def test_bad_combinations_one_line_exit_2_before_work(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    argv = ["train", "--model", "convnext_atto", "--model-kwargs", json.dumps(TINY), "--data", "synthetic",
            "--epochs", "1", "--progress", "none", "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_layer_decay_run_resumes_bitwise(tmp_path):
    """Resumed from its first epoch's checkpoint, a run with layer-wise lr groups ends with the same weights."""
    _, path = _released(tmp_path)
    cfg = dict(pretrained=str(path), layer_decay=0.5, head_lr_scale=10.0, epochs=2, batch_size=16)
    train(_config(tmp_path / "run", **cfg))
    want = (tmp_path / "run" / "last.safetensors").read_bytes()
    steps = sorted((tmp_path / "run" / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(steps) == 2
    shutil.rmtree(steps[-1])
    (tmp_path / "run" / "last.safetensors").unlink()
    train(_config(tmp_path / "run", resume=True, **cfg))
    assert load_file(str(tmp_path / "run" / "last.safetensors")).keys() == load_file_bytes(want).keys()
    got, ref = load_file(str(tmp_path / "run" / "last.safetensors")), load_file_bytes(want)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_pretrained_into_one_channel_adapts_the_stem(tmp_path, caplog):
    released, path = _released(tmp_path)
    with caplog.at_level(logging.WARNING):
        result = train(_config(tmp_path / "grey", pretrained=str(path), in_chans=1, lr=1e-9, min_lr=0.0))
    notes = [r.getMessage() for r in caplog.records if "input convolution adapted" in r.getMessage()]
    assert notes == ["convnext_atto: input convolution adapted to the model's input channels: stem.0.weight "
                     "(3 -> 1 channels)"]
    stem = result.model.state_dict()["stem.0.weight"]
    assert stem.shape == (8, 1, 4, 4)
    torch.testing.assert_close(stem, released.state_dict()["stem.0.weight"].sum(1, keepdim=True), rtol=0, atol=1e-6)
