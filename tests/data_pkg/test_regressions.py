"""The data path's reproduced failures, through the commands that showed them: unreadable images counted as read,
optimize refusing a train/ + val/ folder, a small folder failing with the default batch, and predict writing NaN
into its JSON."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import main
from convscope.models import create_model
from convscope.train.checkpoint import save_model_file

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])


def _images(root, n: int, classes=("a", "b"), size: int = 28) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / c / f"{j}.png")


def _weights(tmp_path, fill: float | None = None):
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=2, in_chans=1, **TINY)
    state = model.state_dict()
    if fill is not None:
        state = {k: torch.full_like(v, fill) if v.is_floating_point() else v for k, v in state.items()}
    meta = dict(model="convnext_atto", model_kwargs=TINY, num_classes=2, in_chans=1, input_size=[32, 32],
                load_size=[32, 32], crop_pct=1.0, mean=[0.5], std=[0.25], class_names=["a", "b"], data="x")
    return save_model_file(tmp_path / "w.safetensors", state, meta)


def _bad_files(folder) -> list[str]:
    """A random-bytes PNG, a 0-byte PNG and a truncated PNG in `folder`; their paths."""
    (folder / "random.png").write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    (folder / "empty.png").write_bytes(b"")
    whole = (folder / "0.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[:len(whole) // 2])
    return sorted(str(folder / n) for n in ("random.png", "empty.png", "truncated.png"))


def test_eval_reports_unreadable_images_by_path_whatever_the_warning_filters(tmp_path, capsys):
    root = tmp_path / "d"
    _images(root / "train", 4)
    _images(root / "val", 6)
    bad = _bad_files(root / "val" / "b")
    w = _weights(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a raw UserWarning would fail the command
        assert main(["eval", "--checkpoint", str(w), "--data", str(root), "--split", "val", "--json"]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)
    assert r["n"] == 12 and r["images"] == 15 and sorted(r["skipped"]) == bad
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "3 of 15 images could not be read" in lines[0] and all(p in lines[0] for p in bad)


def test_eval_and_optimize_take_the_train_val_folder_the_model_was_trained_on(tmp_path, capsys):
    from convscope.deploy.optimize import eval_loader, load_source

    root = tmp_path / "d"
    _images(root / "train", 4)
    _images(root / "val", 3)
    w = _weights(tmp_path)
    assert main(["eval", "--checkpoint", str(w), "--data", str(root), "--json"]) == 0   # default split: test
    assert json.loads(capsys.readouterr().out)["n"] == 6                                 # -> val/, the held-out
    _, info = load_source(str(w))
    held = [y for _, y in eval_loader(info, str(root), 4, None)]
    calibration = [y for _, y in eval_loader(info, str(root), 4, None, split="train")]
    assert [len(y) for y in held] == [4, 2] and torch.cat(held).tolist() == [0, 0, 0, 1, 1, 1]
    assert sum(len(y) for y in calibration) == 8


def test_a_folder_smaller_than_the_default_batch_trains_in_whole_set_batches(tmp_path, capsys):
    root = tmp_path / "d"
    _images(root, 12)   # 24 images: 22 train, 2 held out; the small-data default batch is 64
    out = tmp_path / "run"
    assert main(["train", "--model", "convnext_atto", "--model-kwargs", json.dumps(TINY), "--data", str(root),
                 "--epochs", "1", "--threads", "1", "--progress", "plain", "--out", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data-aware defaults"))
    assert "--batch-size 22 " in line and "fewer than the default batch of 64 per process" in line
    assert "22 training images (small: < 20,000)" in line


def test_predict_and_eval_refuse_non_finite_outputs_instead_of_writing_nan(tmp_path, capsys):
    """Finite weights whose outputs overflow (non-finite weights are refused earlier, when the file is read)."""
    root = tmp_path / "d"
    _images(root, 2)
    w = _weights(tmp_path, fill=3e38)
    assert main(["predict", "--checkpoint", str(w), "--json", str(root / "a" / "0.png")]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and "non-finite outputs" in lines[0] and "0.png" in lines[0]
    assert main(["eval", "--checkpoint", str(w), "--data", str(root), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "non-finite outputs" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("orientation", [6, 3])
def test_images_are_decoded_upright_as_their_exif_orientation_says(tmp_path, orientation):
    from convscope.data.datasets import load_image, probe_images

    pixels = np.random.default_rng(2).integers(0, 256, (20, 30), dtype=np.uint8)   # 20 high, 30 wide
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(tmp_path / "tagged.png", exif=exif.tobytes())
    turn = Image.Transpose.ROTATE_270 if orientation == 6 else Image.Transpose.ROTATE_180
    Image.fromarray(pixels).transpose(turn).save(tmp_path / "upright.png")
    Image.fromarray(pixels).save(tmp_path / "raw.png")
    tagged = load_image(tmp_path / "tagged.png", "L", 20)
    assert torch.equal(tagged, load_image(tmp_path / "upright.png", "L", 20))
    assert not torch.equal(tagged, load_image(tmp_path / "raw.png", "L", 20))
    assert probe_images([str(tmp_path / "tagged.png")])[:2] == ((30, 20) if orientation == 6 else (20, 30))


def test_the_adapted_batch_counts_the_images_of_one_process():
    from convscope.train import TrainConfig
    from convscope.train.pipeline import DataSpec, resolve_defaults

    spec = DataSpec(train=range(90), eval=range(10), classes=("a", "b"), in_chans=1, input_size=(64, 64),
                    load_size=(64, 64), crop_pct=1.0, mean=(0.5,), std=(0.5,), description="test",
                    native_size=(28, 28))
    cfg = TrainConfig(model="convnext_atto")
    assert resolve_defaults(cfg, spec)[0].batch_size == 64                    # 90 images: the default fits
    four, line = resolve_defaults(cfg, spec, world_size=4)                    # 23 images per process
    assert four.batch_size == 23 and four.lr == round(1e-3 * 23 / 128 * 4, 6) and "--batch-size 23 " in line
    given = TrainConfig(model="convnext_atto", batch_size=32)
    assert resolve_defaults(given, spec, world_size=4)[0].batch_size == 32   # a given batch is left as given
