"""`convscope eval --model NAME --checkpoint FILE --data DIR`: a checkpoint from elsewhere (timm's keys, the official
repository's, transformers') evaluated as the registered variant, preprocessed as its card says; it gives exactly
what the same weights give as a convscope weights file with that preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope
from convscope.cli import main
from convscope.models.pretrained.load import _to_our_keys
from convscope.models.source import save_model_file
from convscope.train import evaluate_checkpoint, evaluate_foreign

from ..conftest import import_timm, randomize_

FIXTURES = Path(__file__).parents[1] / "data" / "official_keys"
CLASSES = ("ant", "bee", "cat")


def _folder(root: Path) -> Path:
    pytest.importorskip("PIL")
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def _model() -> torch.nn.Module:
    model = convscope.create_model("convnext_atto", num_classes=len(CLASSES))
    return randomize_(model, seed=3).eval()


def _reference(tmp_path: Path, model: torch.nn.Module, data: Path) -> dict:
    """The same weights as a convscope weights file with the card's preprocessing, through `convscope eval`'s own
    path for such files."""
    cfg = convscope.model_card("convnext_atto").pretrained_cfg
    meta = dict(model="convnext_atto", model_kwargs={}, num_classes=3, in_chans=3, input_size=[224, 224],
                load_size=[256, 256], crop_pct=cfg.crop_pct, mean=list(cfg.mean), std=list(cfg.std),
                class_names=list(CLASSES), data=str(data))
    path = save_model_file(tmp_path / "ours.safetensors", model.state_dict(), meta)
    return evaluate_checkpoint(path, str(data), split="test", batch_size=4, device="cpu")


def test_timm_and_official_checkpoints_equal_the_convscope_file(tmp_path):
    data = _folder(tmp_path / "data")
    model = _model()
    want = _reference(tmp_path, model, data)
    assert want["n"] == 6 and want["loss"] > 0
    torch.save({"state_dict": model.state_dict()}, tmp_path / "timm.pth")           # timm's keys are ours
    got = evaluate_foreign("convnext_atto", tmp_path / "timm.pth", str(data), batch_size=4, device="cpu")
    assert got["keys"] == "timm"
    assert (got["top1"], got["loss"], got["confusion"]) == (want["top1"], want["loss"], want["confusion"])
    # the official layout: stem and downsampling in downsample_layers, blocks in stages.i.j, the head's norm `norm`
    spec = json.loads((FIXTURES / "convnext_atto.json").read_text())["keys"]
    official = dict(zip(spec, range(len(spec)), strict=True))
    converted = convscope.models.registry.official_converter("convnext")({k: torch.tensor(v) for k, v in
                                                                         official.items()}, model)
    back = {int(v): k for k, v in converted.items()}         # official index -> our key
    ours = model.state_dict()
    torch.save({"model": {k: ours[back[i]] for k, i in official.items() if i in back}}, tmp_path / "official.pth")
    got = evaluate_foreign("convnext_atto", tmp_path / "official.pth", str(data), batch_size=4, device="cpu")
    assert got["keys"] == "official"
    assert (got["top1"], got["loss"], got["confusion"]) == (want["top1"], want["loss"], want["confusion"])


def test_transformers_layout_is_recognised():
    import_timm()       # transformers imports torchvision
    from transformers import CvtConfig, CvtForImageClassification
    cfg = CvtConfig(depth=[1, 2, 10], embed_dim=[64, 192, 384], num_heads=[1, 3, 6], num_labels=1000)
    with torch.device("meta"):
        hf = CvtForImageClassification(cfg)
        ours = convscope.create_model("cvt_13_224", mlp_act="gelu")
    converted, keys = _to_our_keys(ours, hf.state_dict(), "auto")
    assert keys == "transformers" and set(converted) == set(ours.state_dict())


def test_cli_eval_foreign_and_its_errors(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    model = _model()
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    argv = ["eval", "--model", "convnext_atto", "--checkpoint", str(tmp_path / "timm.pth"), "--data", str(data),
            "--device", "cpu"]
    assert main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"] == "convnext_atto" and r["keys"] == "timm" and r["n"] == 6 and r["class_names"] == list(CLASSES)
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"convnext_atto (timm keys) on {data} (test, 6 images): top-1 ")
    torch.save(convscope.create_model("convnext_atto", num_classes=5).state_dict(), tmp_path / "five.pth")
    assert main([*argv[:3], "--checkpoint", str(tmp_path / "five.pth"), *argv[5:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classifier does not have the 3 classes of" in err[0], err
    assert main([*argv[:1], "--model", "convnext_tiny", *argv[3:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights do not fit convnext_tiny" in err[0], err


def test_cli_eval_foreign_model_kwargs(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    torch.save(_model().state_dict(), tmp_path / "timm.pth")
    argv = ["eval", "--checkpoint", str(tmp_path / "timm.pth"), "--data", str(data), "--device", "cpu"]
    assert main([*argv, "--model", "convnext_atto", "--model-kwargs", '{"bogus": 1}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not build convnext_atto" in err[0] and "bogus" in err[0], err
    assert main([*argv, "--model-kwargs", '{"depths": [1, 1, 1, 1]}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["convscope: error: --model-kwargs goes with --model (a checkpoint from elsewhere)"]
