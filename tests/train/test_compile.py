"""`--compile`: torch.compile'd training gives the eager run's weights (to rounding) and plain state-dict keys."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from convscope.train import TrainConfig, load_model, train

pytestmark = pytest.mark.slow


def test_compiled_training_matches_eager(tmp_path):
    base = TrainConfig(model="convnext_atto", model_kwargs=dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]),
                       data="synthetic", synthetic_size=64, epochs=1, batch_size=32, lr=1e-3, warmup_epochs=0,
                       scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, drop_path=0.0, progress="none", device="cpu")
    eager = train(dataclasses.replace(base, out=str(tmp_path / "eager")))
    compiled = train(dataclasses.replace(base, out=str(tmp_path / "compiled"), compile=True))
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    assert a.keys() == b.keys() and not any(k.startswith("_orig_mod") for k in b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5   # 2 AdamW steps of lr 1e-3 move ~2e-3
    model, _ = load_model(tmp_path / "compiled" / "last.safetensors")
    assert all(torch.equal(v, b[k]) for k, v in model.state_dict().items())
