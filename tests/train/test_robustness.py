"""Issue 10's reproductions, each ending with a clear message or the right result: a core install (no
matplotlib, rich or Pillow), non-finite losses, damaged checkpoints, high-bit-depth and unreadable images,
empty classes, image-folder sizes, file modes and temporary files, and the smaller fixes around them."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import main
from convscope.data.datasets import ImageFolder, load_image
from convscope.files import atomic_write_text
from convscope.models import create_model, model_traits
from convscope.train import TrainConfig, read_meta, train
from convscope.train.budget import TimeBudget, parse_duration
from convscope.train.report import plot_curves, write_metrics
from convscope.train.summary import dumps_confusion

TINY = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}'
BASE = ["train", "--model", "convnext_atto", "--model-kwargs", TINY, "--data", "synthetic", "--synthetic-size",
        "64", "--batch-size", "16", "--threads", "1", "--progress", "plain"]


def _no(monkeypatch, *modules: str) -> None:
    """Make `modules` unimportable, as on a core install."""
    for m in modules:
        for name in [n for n in sys.modules if n == m or n.startswith(m + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, m, None)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convscope") and "Traceback" not in err, err
    return lines[0]


# -- 1. a core install runs every command ----------------------------------------------------------------------
def test_train_without_matplotlib_and_rich_finishes_and_says_so(tmp_path, capsys, monkeypatch):
    _no(monkeypatch, "matplotlib", "rich")
    out = tmp_path / "run"
    assert main([*BASE[:-1], "bar", "--epochs", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "pip install 'convscope[lab]'" in err and "matplotlib" in err and "rich" in err
    assert (out / "last.safetensors").is_file() and not (out / "curves.png").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_html_report_without_matplotlib_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    _no(monkeypatch, "matplotlib")
    rc = main(["profile", "convnext_atto", "--size", "32", "--repeats", "1", "--html", str(tmp_path / "r.html")])
    out, err = capsys.readouterr()
    assert rc == 2 and "matplotlib" in _one_error_line(err) and out == ""   # nothing was measured
    assert not list(tmp_path.iterdir())


def test_image_folder_without_pillow_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "d" / "a").mkdir(parents=True)
    _no(monkeypatch, "PIL")
    rc = main(["train", "--model", "convnext_atto", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")])
    assert rc == 2 and "pillow" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_predict_without_pillow_is_refused(tmp_path, capsys, monkeypatch):
    w = _weights(tmp_path)
    _no(monkeypatch, "PIL")
    assert main(["predict", "--checkpoint", str(w), str(tmp_path / "x.png")]) == 2
    assert "pillow" in _one_error_line(capsys.readouterr().err)


# -- 4. non-finite loss ----------------------------------------------------------------------------------------
def test_lr_inf_and_huge_are_refused(tmp_path, capsys):
    for lr in ("inf", "1e6", "nan"):
        assert main([*BASE, "--lr", lr, "--out", str(tmp_path / lr)]) == 2
        assert "lr" in _one_error_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import convscope.train.task as task

    calls = {"n": 0}
    real = task.loss_fn

    def loss_fn(logits, targets, smoothing):   # NaN from the 6th micro-step on: epoch 2 of 4 steps each
        calls["n"] += 1
        loss = real(logits, targets, smoothing)
        return loss * float("nan") if calls["n"] >= 6 else loss

    monkeypatch.setattr(task, "loss_fn", loss_fn)
    out = tmp_path / "run"
    rc = main([*BASE, "--epochs", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "diverged" in _one_error_line(err) and "step-00000004" in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000004"]
    assert not (out / "last.safetensors").exists()
    best = read_meta(out / "best.safetensors")
    assert best["epoch"] == 1
    with (out / "checkpoints" / "step-00000004" / "model.safetensors").open("rb"):
        from safetensors.torch import load_file
        assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoints" / "step-00000004" /
                                                                "model.safetensors").values())


def test_metrics_are_strict_json(tmp_path):
    write_metrics(tmp_path / "m.jsonl", [dict(epoch=1, train_loss=float("nan"), top1=float("inf"), lr=1e-3)])

    def refuse(c):
        raise ValueError(c)
    rec = json.loads((tmp_path / "m.jsonl").read_text(), parse_constant=refuse)
    assert rec == dict(epoch=1, train_loss=None, top1=None, lr=1e-3)


# -- 6. resume, temporary files, modes -------------------------------------------------------------------------
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main([*BASE, "--epochs", "3", "--out", str(ref)]) == 0
    assert main([*BASE, "--epochs", "3", "--out", str(run)]) == 0
    newest = sorted((run / "checkpoints").iterdir())[-1]
    for name in ("model.safetensors", "rng.safetensors"):
        data = (newest / name).read_bytes()
        (newest / name).write_bytes(data[: len(data) // 2])   # truncated
        (run / "last.safetensors").unlink()
        capsys.readouterr()
        assert main([*BASE, "--epochs", "3", "--out", str(run), "--resume"]) == 0
        err = capsys.readouterr().err
        assert "damaged" in err and "newest intact" in err
        a, b = read_meta(ref / "last.safetensors"), read_meta(run / "last.safetensors")
        assert a["top1"] == b["top1"]
        from safetensors.torch import load_file
        ra, rb = load_file(ref / "last.safetensors"), load_file(run / "last.safetensors")
        assert all(torch.equal(ra[k], rb[k]) for k in ra)   # bit for bit, from the older checkpoint
        newest = sorted((run / "checkpoints").iterdir())[-1]


def test_no_intact_checkpoint_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--epochs", "1", "--keep-last", "1", "--out", str(run)]) == 0
    ck = next((run / "checkpoints").iterdir())
    (ck / "state.json").write_text("{not json")
    assert main([*BASE, "--epochs", "1", "--keep-last", "1", "--out", str(run), "--resume"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no intact checkpoint" in line and "state.json" in line


def test_files_respect_the_umask_and_temp_files_are_cleaned(tmp_path):
    old = os.umask(0o027)
    try:
        run = tmp_path / "run"
        assert main([*BASE, "--epochs", "1", "--out", str(run), "--progress", "none"]) == 0
        for p in [run / "last.safetensors", run / "metrics.jsonl", run / "config.json"]:
            assert p.stat().st_mode & 0o777 == 0o640, p
        stale = run / ".last.safetensors.abc123.tmp"
        stale.write_bytes(b"half")
        assert main([*BASE, "--epochs", "1", "--out", str(run), "--resume", "--progress", "none"]) == 0
        assert not stale.exists()
    finally:
        os.umask(old)
    atomic_write_text(tmp_path / "x.txt", "x")
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~old


# -- data ------------------------------------------------------------------------------------------------------
def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    arr = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")
    got = load_image(tmp_path / "deep.png", "L", 4)[0, 0].tolist()
    assert got == [0, 64, 128, 255]
    rgb = load_image(tmp_path / "deep.png", "RGB", 4)
    assert rgb.shape == (3, 4, 4) and rgb[:, 0, 2].tolist() == [128] * 3


def _folder(root: Path, classes=("a", "b"), n=4, size=28, mode="L") -> Path:
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.new(mode, (size, size), 40 + 150 * i + j).save(root / c / f"{j}.png")
    return root


def test_empty_class_folder_is_an_error_for_training(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="'empty' holds no image files"):
        ImageFolder(root, 28)
    messages = []
    ds = ImageFolder(root, 28, classes=("a", "b", "empty"), report=messages.append)   # evaluation: reported
    assert len(ds) == 8 and "no images of class(es) 'empty'" in messages[0]


def _weights(tmp_path: Path, classes=("a", "b")) -> Path:
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=len(classes), in_chans=1, depths=[1, 1, 1, 1],
                         dims=[8, 16, 24, 32])
    from convscope.models.source import save_model_file
    meta = dict(model="convnext_atto", model_kwargs=dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]),
                num_classes=len(classes), in_chans=1, input_size=[32, 32], load_size=[32, 32], crop_pct=1.0,
                mean=[0.5], std=[0.25], class_names=list(classes), data="x")
    return save_model_file(tmp_path / "w.safetensors", model.state_dict(), meta)


def test_eval_reports_unreadable_images_and_honours_limit_on_folders(tmp_path, capsys, monkeypatch):
    root = _folder(tmp_path / "d", n=5)
    w = _weights(tmp_path)
    import convscope.data.datasets as datasets

    real = datasets.load_image
    bad = str(root / "b" / "3.png")

    def load(path, mode, size):
        if str(path) == bad:
            raise OSError("image file is truncated")
        return real(path, mode, size)

    monkeypatch.setattr(datasets, "load_image", load)
    assert main(["eval", "--checkpoint", str(w), "--data", str(root), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 9 and "1 of 10 images could not be read" in err and bad in err
    assert main(["eval", "--checkpoint", str(w), "--data", str(root), "--limit", "4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 4 and sum(r["confusion"][0]) == 2 and sum(r["confusion"][1]) == 2   # spread over classes
    for limit in ("0", "-2"):
        assert main(["eval", "--checkpoint", str(w), "--data", str(root), "--limit", limit]) == 2
        assert "argument --limit: expected an integer >= 1" in _one_error_line(capsys.readouterr().err)


def test_eval_limit_zero_is_refused_in_train(tmp_path, capsys):
    assert main([*BASE, "--eval-limit", "0", "--out", str(tmp_path / "r")]) == 2
    assert "eval_limit" in _one_error_line(capsys.readouterr().err)


def test_image_folder_trains_at_its_native_size_with_data_aware_defaults(tmp_path, capsys):
    root = _folder(tmp_path / "d", n=20, size=28)
    out = tmp_path / "run"
    assert main(["train", "--model", "convnext_atto", "--model-kwargs", TINY, "--data", str(root), "--epochs", "1",
                 "--threads", "1", "--progress", "plain", "--out", str(out), "--batch-size", "8"]) == 0
    stdout = capsys.readouterr().out
    line = next(x for x in stdout.splitlines() if x.startswith("data-aware defaults"))
    assert "--scale 1,1" in line and "--batch-size" not in line
    assert "input 64x64 (the data's 28x28 raised to 64: the smallest size at which convnext_atto's last stage " \
           "(stride 32) still sees 2x2)" in line
    meta = read_meta(out / "last.safetensors")
    assert meta["input_size"] == [64, 64] and meta["load_size"] == [64, 64]
    assert meta["in_chans"] == 1 and meta["crop_pct"] == 1.0
    assert "1x64x64" in stdout and "decoded once and held in memory" in stdout


def test_folder_cache_counts_the_held_out_split_too(tmp_path, monkeypatch):
    """train/ + val/: the 1 GiB cache check counts both splits, since both are decoded into memory."""
    from convscope.train import pipeline
    from convscope.train.pipeline import build_data

    root = tmp_path / "d"
    _folder(root / "train", n=5)
    _folder(root / "val", n=3)
    counted = []
    monkeypatch.setattr(pipeline, "cache_fits", lambda n, c, s: counted.append(n) or n <= 10)
    cfg = TrainConfig(model="convnext_atto", data=str(root), model_kwargs={"depths": [1, 1, 1, 1],
                                                                           "dims": [8, 16, 24, 32]})
    spec = build_data(cfg, model_traits("convnext_atto", **cfg.model_kwargs))
    assert counted == [16] and len(spec.train) == 10 and len(spec.eval) == 6
    assert "held in memory" not in spec.description    # 16 decoded images exceed the (patched) limit of 10
    assert spec.train._cache is None and spec.eval._cache is None


# -- 7. load_checkpoint ----------------------------------------------------------------------------------------
def test_load_checkpoint_non_strict_returns_the_incompatible_keys():
    from convscope.models import load_checkpoint

    model = create_model("convnext_atto", num_classes=3, depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
    sd = model.state_dict()
    del sd["head.fc.weight"]
    sd["extra.weight"] = torch.zeros(1)
    keys = load_checkpoint(model, sd, strict=False)
    assert keys.missing_keys == ["head.fc.weight"] and keys.unexpected_keys == ["extra.weight"]
    assert keys.mismatched_keys == []


def test_official_checkpoint_errors_name_the_official_keys():
    from convscope.models import load_checkpoint

    fixture = Path(__file__).parents[1] / "data" / "official_keys" / "convnext_atto.json"
    spec = json.loads(fixture.read_text())
    official = {k: torch.zeros(shape) for k, shape in spec["keys"].items()}
    gone = next(k for k in official if k.endswith("pwconv1.weight"))
    del official[gone]
    with torch.device("meta"):
        model = create_model("convnext_atto")
    with pytest.raises(ValueError, match="1 missing keys") as e:
        load_checkpoint(model, official, source="official")
    assert gone in str(e.value)
    official[gone + "_typo"] = torch.zeros(1)
    keys = load_checkpoint(model, official, source="official", strict=False)
    assert gone in keys.missing_keys[0] and keys.unexpected_keys == [gone + "_typo"]


# -- the model's input check -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float64, torch.bfloat16])
def test_wrong_input_dtype_is_a_value_error(dtype):
    model = create_model("convnext_atto", depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]).eval()
    x = torch.ones(1, 3, 32, 32).to(dtype)
    with pytest.raises(ValueError, match="convnext_atto"):
        model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # autocast takes care of the dtype
        model(torch.ones(1, 3, 32, 32))


# -- time budget -----------------------------------------------------------------------------------------------
def test_parse_duration():
    assert [parse_duration(s) for s in ("540", "540s", "9m", "9m30s", "1h", "1h5m", "1.5m")] == \
        [540, 540, 540, 570, 3600, 3900, 90]
    for bad in ("", "0", "x", "-1", "9q", "m", "1e3", "nan"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_time_budget_plan_fits_the_measured_speed(monkeypatch):
    import convscope.train.budget as budget

    now = {"t": 100.0}
    monkeypatch.setattr(budget.time, "perf_counter", lambda: now["t"])
    b = TimeBudget(600, t_start=90.0, steps_per_epoch=100, max_epochs=50, images_per_step=128, eval_images=1280,
                   eval_every=1, warmup_steps=30)
    total = None
    for done in range(1, 100):
        now["t"] += 1.0   # 1 s per step: 128 img/s
        total = b.after_step(done)
        if total is not None:
            break
    assert done < 30 and b.step_s == pytest.approx(1.0)   # decided within the warm-up
    # what is left after the decision holds the remaining steps and one 5 s evaluation per epoch begun, plus one
    left = 600 * budget.SAFETY - (now["t"] - 90) - budget.FINAL_RESERVE_S
    evals = math.ceil(total / 100) + 1
    assert (total - done) + 5 * evals <= left < (total + 5 - done) + 5 * (evals + 1)
    assert total % 100 != 0   # a partial last epoch: the plan is in steps
    assert b.refit(done, total, step_s=10.0) < total and b.refit(done, total, step_s=0.1) == total
    # at most --epochs whole epochs
    b2 = TimeBudget(1e6, 90.0, 100, 3, 128, 1280, 1, 30)
    assert b2.fit_steps(10, 1.0) == 300


def test_time_budget_run_ends_in_time_with_fewer_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*BASE, "--epochs", "500", "--time-budget", "12s", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "time budget 12s: measured" in stdout
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= len(history) < 500 and "top1" in history[-1]
    meta = read_meta(out / "last.safetensors")
    assert meta["epoch"] == len(history)
    state = json.loads((sorted((out / "checkpoints").iterdir())[-1] / "state.json").read_text())
    assert state["epochs"] == len(history) and state["schedule"]["total_steps"] == history[-1]["step"]
    assert history[-1]["lr"] < 2e-3 / 10   # the cosine ran its course in the fitted schedule


# -- smaller fixes ---------------------------------------------------------------------------------------------
def test_confusion_matrix_aligns_long_class_names():
    text = dumps_confusion([[1, 22], [333, 4]], ["a very long class name", "b"])
    lines = text.splitlines()
    assert len({len(x) for x in lines}) == 1   # every row as wide as the header
    assert lines[1].endswith("1    22") and lines[2].endswith("333     4")


def test_train_restores_torch_threads(tmp_path):
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    cfg = TrainConfig(model="convnext_atto", model_kwargs=json.loads(TINY), data="synthetic", synthetic_size=32,
                      batch_size=16, epochs=1, threads=want, progress="none", out=str(tmp_path / "r"))
    train(cfg)
    assert torch.get_num_threads() == before


def test_plot_curves_before_any_evaluation_does_not_warn(tmp_path, recwarn):
    plot_curves(tmp_path / "c.png", [dict(epoch=1, train_loss=1.0)])
    assert not [w for w in recwarn if "legend" in str(w.message).lower() or "artists" in str(w.message)]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_progress_bar_warnings_go_to_stderr(capsys):
    from convscope.train.report import Console

    c = Console("bar")
    c.start(10, 0)
    try:
        c.warn("careful")
    finally:
        c.close()
    out, err = capsys.readouterr()
    assert "careful" in err and "careful" not in out


def test_official_partial_deploy_checkpoint_loads_into_a_deploy_model():
    """RepLKNet's official re-parameterised checkpoints (merged kernels, BatchNorms kept) load through
    load_checkpoint(create_model(name, deploy=True), sd, source="official") as through pretrained=."""
    from convscope.models import load_checkpoint

    for form in ("structural_reparam", "deep_fuse_BN"):
        fixture = Path(__file__).parents[1] / "data" / "official_keys_deploy" / f"replknet_31b.{form}.json"
        spec = json.loads(fixture.read_text())
        official = {k: torch.empty(shape, device="meta") for k, shape in spec["keys"].items()}
        with torch.device("meta"):
            model = create_model("replknet_31b", deploy=True)
        want = {k: v.shape for k, v in model.state_dict().items()}
        load_checkpoint(model, official, source="official")   # strict
        assert {k: v.shape for k, v in model.state_dict().items()} == want


@pytest.mark.parametrize("edit,expect", [
    (lambda m: m.pop("num_classes"), "lacks 'num_classes'"),
    (lambda m: m.update(model_kwargs={"bogus": 1}), "are not constructor arguments of convnext_atto"),
    (lambda m: m.update(input_size=[0, 0]), "impossible 'input_size'"),
    (lambda m: m.update(class_names=["a"]), "impossible 'class_names'"),
    (None, "not valid JSON"),
])
def test_hand_edited_weights_metadata_is_one_line_naming_the_file(tmp_path, capsys, edit, expect):
    from safetensors.torch import load_file, save_file

    w = _weights(tmp_path)
    raw = json.loads(__import__("safetensors").safe_open(str(w), "pt").metadata()["convscope"])
    if edit is None:
        text = json.dumps(raw)[:-3]
    else:
        edit(raw)
        text = json.dumps(raw)
    save_file(load_file(w), str(w), metadata={"convscope": text})
    img = tmp_path / "x.png"
    Image.new("L", (28, 28), 9).save(img)
    assert main(["predict", "--checkpoint", str(w), str(img)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert expect in line and str(w) in line
