"""`convscope train / eval / predict` end to end on a small Fashion-MNIST subset and on an image folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import main
from convscope.data import fashion_mnist
from convscope.data.datasets import FASHION_MNIST_CLASSES
from convscope.data.transforms import EvalTransform
from convscope.train import load_model, read_meta

from ..conftest import run_cli

TINY = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}'


def test_train_eval_predict_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_cli("train", "--model", "convnext_atto", "--model-kwargs", TINY, "--data", "fashion-mnist",
                   "--data-limit", "512", "--eval-limit", "200", "--epochs", "3", "--batch-size", "32", "--lr", "3e-3",
                   "--keep-last", "1", "--threads", "1", "--progress", "plain", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # train: the run directory
    assert "epoch   3" in proc.stdout and "top-1" in proc.stdout and "time: setup" in proc.stdout
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3] and [h["step"] for h in history] == [16, 32, 48]
    assert {"train_loss", "lr", "top1", "top5", "eval_loss", "train_img_per_s"} <= set(history[0])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000048"]   # --keep-last 1
    meta = read_meta(out / "last.safetensors")
    assert meta["model"] == "convnext_atto" and meta["num_classes"] == 10 and meta["in_chans"] == 1
    assert meta["input_size"] == [32, 32] and meta["load_size"] == [28, 28]         # 28x28 raised to the minimum
    assert meta["class_names"] == list(FASHION_MNIST_CLASSES)
    best = read_meta(out / "best.safetensors")
    tops = [h["top1"] for h in history]
    assert best["top1"] == max(tops) and best["epoch"] == tops.index(max(tops)) + 1
    confusion = json.loads((out / "confusion.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == 200
    assert history[-1]["top1"] > 30   # it learned something in 3 short epochs (chance: 10%)

    # eval: the same weights on the same 200 images give the training run's last evaluation
    assert main(["eval", "--checkpoint", str(out / "last.safetensors"), "--data", "fashion-mnist", "--limit", "200",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 200 and r["top1"] == pytest.approx(history[-1]["top1"])
    assert r["top5"] == pytest.approx(history[-1]["top5"])
    assert main(["eval", "--checkpoint", str(out), "--limit", "50"]) == 0   # run directory -> best weights
    assert "confusion matrix" in capsys.readouterr().out

    # predict: PNG files give the model's own top class
    test = fashion_mnist(split="test")
    paths = []
    for i in range(4):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(test.images[i, 0].numpy()).save(p)
        paths.append(str(p))
    assert main(["predict", "--checkpoint", str(out / "last.safetensors"), "--topk", "2", "--json", *paths]) == 0
    results = json.loads(capsys.readouterr().out)
    model, meta = load_model(out / "last.safetensors")
    with torch.no_grad():
        logits = model(EvalTransform(meta["input_size"], meta["mean"], meta["std"])(test.images[:4]))
    assert [r["top"][0]["index"] for r in results] == logits.argmax(1).tolist()
    assert [r["top"][0]["label"] for r in results] == [FASHION_MNIST_CLASSES[i] for i in logits.argmax(1)]
    assert all(len(r["top"]) == 2 and r["top"][0]["prob"] >= r["top"][1]["prob"] for r in results)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--model", "convnxt_atto", "--data", "synthetic"], "did you mean convnext_atto"),
    (["train", "--model", "convnext_atto", "--data", "/nonexistent/dir"], "neither 'fashion-mnist'"),
    (["train", "--model", "convnext_atto", "--data", "synthetic", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "--model", "convnext_atto", "--data", "synthetic", "--input-size", "16"], "at least 32x32"),
    (["predict", "--checkpoint", "/nonexistent.safetensors", "x.png"], "no checkpoint file"),
])
def test_errors_are_one_line_with_status_2(argv, needle, tmp_path, capsys):
    assert main([*argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convscope: error:") and needle in err[0], err


def test_run_directory_errors(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--model", "convnext_atto", "--model-kwargs", TINY, "--data", "synthetic", "--synthetic-size",
            "64", "--epochs", "1", "--batch-size", "32", "--lr", "3e-3", "--progress", "none", "--out"]
    assert main([*base, str(out)]) == 0
    capsys.readouterr()
    assert main([*base, str(out)]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "empty"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main([*base[:-1], "--lr", "1e-3", "--out", str(out), "--resume"]) == 2
    assert "lr: 0.003 -> 0.001" in capsys.readouterr().err
    import convscope
    convscope.save_weights({"w": torch.ones(1)}, tmp_path / "plain.safetensors")
    assert main(["eval", "--checkpoint", str(tmp_path / "plain.safetensors")]) == 2
    assert "no convscope metadata" in capsys.readouterr().err


def _image_folder(root, n=8):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("circle", "stripes")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            yy, xx = np.mgrid[:24, :30]
            img = ((xx - 15) ** 2 + (yy - 12) ** 2 < 60) if c == 0 else (xx // 3) % 2 == 0
            arr = (img * 200 + rng.integers(0, 50, img.shape)).astype(np.uint8)
            Image.fromarray(np.stack([arr] * 3, -1)).save(root / name / f"{i}.png")
    (root / "stripes" / "broken.png").write_bytes(b"not an image at all")
    return root


def test_image_folder_training_reports_bad_files(tmp_path, capsys):
    root = _image_folder(tmp_path / "data")
    args = ["train", "--model", "convnext_atto", "--model-kwargs", TINY, "--data", str(root), "--input-size", "32",
            "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--progress", "none"]
    assert main([*args, "--out", str(tmp_path / "skip")]) == 0
    cap = capsys.readouterr()
    assert "skipped 1 unreadable image(s)" in cap.err and str(root / "stripes" / "broken.png") in cap.err
    meta = read_meta(tmp_path / "skip" / "last.safetensors")
    assert meta["class_names"] == ["circle", "stripes"] and meta["in_chans"] == 3
    # images smaller than the card's 224 are used whole (crop_pct 1), at the asked 32x32
    assert meta["load_size"] == [32, 32] and meta["crop_pct"] == 1.0
    assert main([*args, "--out", str(tmp_path / "raise"), "--on-error", "raise"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read image" in err[0] and "broken.png" in err[0]
    assert main(["predict", "--checkpoint", str(tmp_path / "skip"), str(root / "circle" / "0.png")]) == 0
    assert capsys.readouterr().out.startswith(str(root / "circle" / "0.png") + ": ")
