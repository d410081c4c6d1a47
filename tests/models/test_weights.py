"""Reading and writing weights: safe loading, atomic writes, checkpoint wrappers."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

import convscope
from convscope.models import load_checkpoint, read_state_dict, save_weights


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": evil}, f)
    torch.save({"model": evil, "w": torch.zeros(1)}, tmp_path / "evil_zip.pth")
    for p in (path, tmp_path / "evil_zip.pth"):
        with pytest.raises(ValueError, match="weights_only"):
            read_state_dict(p)
    assert not marker.exists()


def test_torch_checkpoint_wrappers_and_prefixes(tmp_path):
    model = convscope.create_model("convnext_atto")
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    fresh = convscope.create_model("convnext_atto")
    load_checkpoint(fresh, tmp_path / "ckpt.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path):
    model = convscope.create_model("convnext_atto")
    path = save_weights(model, tmp_path / "w.safetensors", metadata={"model": "convnext_atto"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    # a failed write keeps the previous file intact
    bad = {"x": torch.zeros(2)}
    bad["y"] = bad["x"]  # safetensors refuses shared storage: the write fails before the rename
    with pytest.raises(Exception):  # noqa: B017 -- safetensors' own error type is not public API
        save_weights({"a": bad["x"].expand(2, 2)} | bad, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    assert set(read_state_dict(path)) == set(model.state_dict())


def test_garbage_file_gives_clear_error(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="neither a safetensors file nor a torch checkpoint"):
        read_state_dict(p)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        read_state_dict(tmp_path / "missing.pth")


def test_features_only_model_loads_backbone_weights(tmp_path):
    model = convscope.create_model("convnext_atto").eval()
    path = save_weights(model, tmp_path / "w.safetensors")
    backbone = convscope.create_model("convnext_atto", features_only=True, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model.forward_intermediates(x, intermediates_only=True)
        got = backbone(x)
    for a, b in zip(got, want, strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
