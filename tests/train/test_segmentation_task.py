"""`convscope train --task segmentation` through the same loop, callbacks and checkpoints as classification: a
tiny run learns, a resume from a mid-epoch checkpoint ends bit for bit where the uninterrupted run does, `eval`
reports train/dense.py's metrics of the same predictions, `predict` writes overlays, and bad data ends in one
line naming the file (exit 2)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from convscope.cli import main
from convscope.data.mosaic import MOSAIC_CLASSES, make_mosaics, write_mosaics
from convscope.train.dense import SegmentationMetrics, predict_logits
from convscope.train.parts import Normalize
from convscope.train.segmentation import load_segmenter

TINY = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}'
# 32 mosaic pairs of 32x32, batch 8: 4 steps per epoch; a checkpoint every 3 steps lands mid-epoch
ARGS = ["train", "--task", "segmentation", "--model", "convnext_atto", "--model-kwargs", TINY, "--head", "upernet",
        "--data", "mosaics", "--input-size", "32", "--data-limit", "32", "--eval-limit", "8", "--epochs", "2",
        "--batch-size", "8", "--lr", "3e-3", "--drop-path", "0.1", "--checkpoint-every", "3", "--keep-last", "10",
        "--threads", "1", "--device", "cpu", "--progress", "none"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def _bytes(path) -> dict[str, bytes]:
    return {k: v.numpy().tobytes() for k, v in load_file(str(path)).items()}


def _history(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_segmentation_run_trains(run):
    history = _history(run)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(0 <= h["miou"] <= h["pixel_acc"] <= 1 for h in history)   # background dominates: IoU <= accuracy
    iou = json.loads((run / "iou.json").read_text())
    assert iou["class_names"][0] == "background" and len(iou["iou_per_class"]) == 11
    assert iou["miou"] == history[-1]["miou"]


def test_resume_from_a_mid_epoch_checkpoint_is_bit_exact(run, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    for step in sorted((killed / "checkpoints").glob("step-*"))[1:]:   # as if killed after step 3's checkpoint
        shutil.rmtree(step)
    for name in ("last.safetensors", "best.safetensors", "iou.json"):
        (killed / name).unlink()
    state = json.loads(next((killed / "checkpoints").glob("step-*")).joinpath("state.json").read_text())
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (3, 0, 3)
    assert main([*ARGS, "--out", str(killed), "--resume"]) == 0
    for name in ("last.safetensors", "best.safetensors"):
        assert _bytes(killed / name) == _bytes(run / name), name
    timing = ("train_img_per_s", "epoch_time_s")
    assert [{k: v for k, v in h.items() if k not in timing} for h in _history(killed)] == \
        [{k: v for k, v in h.items() if k not in timing} for h in _history(run)]


def _reference(checkpoint, n, window=None, stride=None) -> dict:
    """dense.py's metrics of the model's own predictions on the first `n` test mosaics (at the model's input size,
    or their own 96x128 with sliding windows), computed here directly."""
    model, meta = load_segmenter(checkpoint)
    m = make_mosaics("test", n, size=(32, 32) if window is None else (96, 128))
    x = Normalize(meta["mean"], meta["std"])(torch.from_numpy(m.images)[:, None])
    metrics = SegmentationMetrics(11)
    with torch.inference_mode():
        metrics.update(predict_logits(model, x, 11, window=window, stride=stride), torch.from_numpy(m.masks).long())
    return metrics.compute()


@pytest.mark.parametrize("n, window, stride", [(8, None, None), (3, (32, 32), (32, 24))])
def test_eval_reports_dense_metrics_of_the_same_predictions(run, n, window, stride, capsys):
    extra = [] if window is None else ["--window", "x".join(map(str, window)), "--stride", "x".join(map(str, stride))]
    assert main(["eval", "--checkpoint", str(run / "last.safetensors"), "--data", "mosaics", "--split", "test",
                 "--limit", str(n), "--json", "--device", "cpu", *extra]) == 0
    r = json.loads(capsys.readouterr().out)
    ref = _reference(run / "last.safetensors", n, window, stride)   # 96x128 in 3 x 5 windows overlapping in width
    assert r["n"] == n and r["miou"] == ref["miou"] and r["pixel_acc"] == ref["pixel_acc"]
    assert r["iou_per_class"] == [None if np.isnan(v) else v for v in ref["iou_per_class"].tolist()]
    assert r["confusion"] == ref["confusion"].tolist()


def test_predict_writes_overlays_of_the_image_size(run, tmp_path, capsys):
    m = make_mosaics("test", 1, size=(40, 56))
    Image.fromarray(m.images[0]).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--json", "--device", "cpu"]) == 0
    [r] = json.loads(capsys.readouterr().out)
    overlay, mask = Image.open(r["overlay"]), np.asarray(Image.open(r["mask"]))
    assert overlay.mode == "RGB" and overlay.size == (56, 40) and mask.shape == (40, 56) and mask.max() < 11
    assert sum(r["classes"].values()) == pytest.approx(1, abs=1e-3)
    # untinted where the model says background: the overlay there is the image itself
    np.testing.assert_array_equal(np.asarray(overlay)[mask == 0], np.repeat(m.images[0][mask == 0, None], 3, 1))


def test_a_folder_trains_with_pairs_resized_and_held_out(tmp_path, capsys):
    write_mosaics(tmp_path / "data", "val", 20, size=(40, 40))    # one folder: 10% held out
    (tmp_path / "data" / "classes.txt").write_text("\n".join(MOSAIC_CLASSES) + "\n")
    argv = [*ARGS[:ARGS.index("--data")], "--data", str(tmp_path / "data"), "--input-size", "32", "--epochs", "1",
            "--batch-size", "6", "--progress", "plain", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "input 1x32x32, 11 classes" in out and "(20 pairs of 32x32)" in out and "3 steps/epoch" in out
    model, meta = load_segmenter(tmp_path / "o")
    assert meta["input_size"] == [32, 32] and meta["class_names"] == list(MOSAIC_CLASSES)
    assert main(["eval", "--checkpoint", str(tmp_path / "o"), "--data", str(tmp_path / "data"), "--json",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20   # eval reads the whole folder


def _folder(root, problem: str):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b", "c"):
        Image.new("L", (16, 16), 40).save(root / "images" / f"{name}.png")
        Image.new("L", (16, 16), 1).save(root / "masks" / f"{name}.png")
    if problem == "size":
        Image.new("L", (12, 16), 1).save(root / "masks" / "b.png")
    elif problem == "label":
        Image.new("L", (16, 16), 11).save(root / "masks" / "b.png")
    else:
        (root / "masks" / "b.png").unlink()
    return root


@pytest.mark.parametrize("problem, needle", [
    ("size", "masks/b.png: mask is 12x16 (WxH) but its image b.png is 16x16"),
    ("label", "masks/b.png: label 11 is outside 0..10"),
    ("no mask", "images/b.png: image without a mask"),
])
def test_bad_segmentation_data_is_one_line_naming_the_file(tmp_path, capsys, problem, needle):
    data = _folder(tmp_path / "data", problem)
    argv = [*ARGS[:ARGS.index("--data")], "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()   # refused before any work


@pytest.mark.parametrize("extra, needle", [
    (["--mixup", "0.2"], "--mixup only apply to --task classification"),
    (["--scale", "2"], "--scale is the crop area range MIN,MAX (a single factor only with --task sr)"),
    (["--head", "nope"], "invalid choice: 'nope'"),
])
def test_settings_a_segmentation_run_refuses(tmp_path, capsys, extra, needle):
    assert main([*ARGS, *extra, "--out", str(tmp_path / "o")]) == 2
    assert needle in capsys.readouterr().err


def test_a_train_folder_without_val_or_test_is_refused_in_one_line(tmp_path, capsys):
    write_mosaics(tmp_path / "data" / "train", "train", 2, size=(32, 32))
    argv = [*ARGS[:ARGS.index("--data")], "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has train/ but no val/ or test/ to evaluate on" in err[0], err


def test_weights_that_do_not_fit_the_described_segmenter_are_one_line(run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = run / "best.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    state = load_file(str(src))
    dropped = sorted(k for k in state if k.startswith("head."))[0]
    del state[dropped]
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    want = rf"^{bad}: its weights do not fit upernet on convnext_atto: Missing key\(s\) in state_dict: \"{dropped}\""
    with pytest.raises(ValueError, match=want):   # the file, the model, and torch's reason in one line
        load_segmenter(bad)
