"""`--init-from`: a run starts from a pruned model (save_pruned) at its pruned widths, fine-tunes it, and every
weights file it writes rebuilds at those widths; a file of another model or class count is refused clearly."""
from __future__ import annotations

import json

import pytest
import torch

from convscope import create_model
from convscope.cli import main
from convscope.deploy.prune import hidden_groups, prune, pruning_spec, save_pruned
from convscope.models import save_weights
from convscope.train import TrainConfig, load_model, read_meta, train

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])


def _config(out, **kw):
    base = dict(model="convnext_atto", model_kwargs=TINY, data="synthetic", synthetic_size=64, epochs=1,
                batch_size=32, lr=1e-3, warmup_epochs=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, drop_path=0.0,
                progress="none", device="cpu", threads=1, out=str(out))
    return TrainConfig(**{**base, **kw})


def _widths(model):
    return {g.path: g.modules(model)[1].weight.shape[0] for g in hidden_groups(model)}


def _pruned_file(tmp_path, num_classes=4):
    torch.manual_seed(3)
    model = create_model("convnext_atto", num_classes=num_classes, **TINY)
    full = _widths(model)
    model, _ = prune(model, 0.5, quantum=4)
    path = save_pruned(model, pruning_spec(model, "convnext_atto"), tmp_path / f"pruned{num_classes}.safetensors")
    return model, path, full


def test_fine_tune_from_pruned(tmp_path):
    pruned, path, full = _pruned_file(tmp_path)
    widths = _widths(pruned)
    assert all(widths[k] < full[k] for k in full)   # really pruned (e.g. 32 -> 16 hidden channels)
    result = train(_config(tmp_path / "ft", init_from=str(path)))
    assert _widths(result.model) == widths
    before, after = pruned.state_dict(), result.model.state_dict()
    assert before.keys() == after.keys()
    # two AdamW steps of lr 1e-3 move a weight by ~2e-3: the run started from the pruned weights, not a new init
    drift = max((after[k].float() - before[k].float()).abs().max().item() for k in before)
    assert 0 < drift < 0.01, drift
    # the run's weights files carry the pruned widths: load_model (eval, predict, optimize) rebuilds them
    assert read_meta(tmp_path / "ft" / "last.safetensors")["pruning"]["groups"]
    rebuilt, _ = load_model(tmp_path / "ft" / "last.safetensors")
    assert _widths(rebuilt) == widths
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), result.model.eval()(x))
    # ... and a further run can start from them in turn
    again = train(_config(tmp_path / "ft2", init_from=str(tmp_path / "ft" / "last.safetensors")))
    assert _widths(again.model) == widths


def test_init_from_plain_run_weights(tmp_path):
    first = train(_config(tmp_path / "a"))
    second = train(_config(tmp_path / "b", init_from=str(tmp_path / "a" / "last.safetensors"), lr=1e-6))
    a, b = first.model.state_dict(), second.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert "pruning" not in read_meta(tmp_path / "b" / "last.safetensors")


def test_init_from_errors(tmp_path, capsys):
    _, path10, _ = _pruned_file(tmp_path, num_classes=10)
    with pytest.raises(ValueError, match=r"num_classes 10 \(the run: 4\)"):
        train(_config(tmp_path / "x", init_from=str(path10)))
    plain = save_weights(create_model("convnext_atto", num_classes=4, **TINY), tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="neither a pruning spec"):
        train(_config(tmp_path / "y", init_from=str(plain)))
    argv = ["train", "--model", "convnext_atto", "--model-kwargs", json.dumps(TINY), "--data", "synthetic",
            "--synthetic-size", "64", "--epochs", "1", "--progress", "none", "--out", str(tmp_path / "z")]
    assert main([*argv, "--init-from", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init-from: no weights file at" in err[0], err
    assert main([*argv, "--init-from", str(path10)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "of another model: num_classes 10" in err[0], err
