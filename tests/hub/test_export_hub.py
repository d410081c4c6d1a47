"""`convscope export-hub RUN --out DIR [--push ORG/NAME]`: a trained run as a Hub model folder (config.json,
model.safetensors, README.md) that create_model loads back, from the folder or a (seeded) Hub cache, with equal
logits; --push goes through huggingface_hub's upload_folder (patched: no network)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import convscope
from convscope.cli import main
from convscope.models import pretrained as hub
from convscope.train import TrainConfig, load_model, train

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])


@pytest.fixture
def run(tmp_path):
    cfg = TrainConfig(model="convnext_atto", model_kwargs=TINY, data="synthetic", synthetic_size=64, epochs=2,
                      batch_size=32, lr=1e-3, warmup_epochs=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0,
                      drop_path=0.0, progress="none", device="cpu", threads=1, out=str(tmp_path / "run"))
    train(cfg)
    return tmp_path / "run"


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_export_then_load_back_from_the_folder_and_the_hub_cache(run, tmp_path, capsys, caches):
    out = tmp_path / "exported"
    assert main(["export-hub", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote config.json, model.safetensors, README.md to {out}"
    config = json.loads((out / "config.json").read_text())
    trained, meta = load_model(run / "best.safetensors")
    assert (config["architecture"], config["num_classes"], config["model_args"]) == ("convnext_atto", 4, TINY)
    assert config["in_chans"] == meta["in_chans"] and config["label_names"] == meta["class_names"]
    assert config["pretrained_cfg"]["input_size"] == [meta["in_chans"], *meta["input_size"]]
    assert config["pretrained_cfg"]["classifier"] == "head.fc" and config["num_features"] == 32
    card = (out / "README.md").read_text()
    assert "# convnext_atto trained on synthetic" in card and "| epochs | 2 |" in card and "| lr | 0.001 |" in card
    assert f'"top1": {meta["top1"]}' in card and card.count("\n| 1 |") + card.count("\n| 2 |") == 2
    kwargs = dict(num_classes=4, in_chans=meta["in_chans"], **TINY)
    x = torch.randn(2, meta["in_chans"], *meta["input_size"])
    want = _logits(trained, x)
    assert torch.equal(_logits(convscope.create_model("convnext_atto", pretrained=str(out), **kwargs), x), want)
    commit = "0123456789abcdef0123456789abcdef01234567"     # the Hub cache's layout: refs/main -> snapshot
    repo = caches["hf"] / "models--me--tiny-run"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(out, repo / "snapshots" / commit)
    hub.set_offline(True)
    got = _logits(convscope.create_model("convnext_atto", pretrained="hf-hub:me/tiny-run", **kwargs), x)
    assert torch.equal(got, want)


def test_push_calls_upload_folder_with_the_folder(run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            return "https://hub.test/me/tiny-run/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "exported"
    assert main(["export-hub", str(run), "--out", str(out), "--push", "me/tiny-run"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"pushed {out} to hf-hub:me/tiny-run: https://hub.test/me/tiny-run/commit/1")
    assert calls[0] == ("create_repo", "me/tiny-run", dict(repo_type="model", private=False, exist_ok=True))
    assert calls[1][0] == "upload_folder" and calls[1][1]["folder_path"] == str(out)
    assert calls[1][1]["repo_id"] == "me/tiny-run" and calls[1][1]["repo_type"] == "model"
    assert 'pretrained="hf-hub:me/tiny-run"' in (out / "README.md").read_text().replace("'", '"')


def test_errors_are_one_line_before_anything_is_written(run, tmp_path, capsys):
    out = tmp_path / "exported"
    for argv, message in ((["export-hub", str(run), "--out", str(out), "--push", "not a repo"], "'org/name'"),
                          (["export-hub", str(tmp_path / "nothing"), "--out", str(out)], "is not a run directory")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()
