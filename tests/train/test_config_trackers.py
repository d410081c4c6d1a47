"""`convscope train/eval --config FILE` (the command line overriding the file, the run's config.yaml repeating it
bit for bit) and `--log tensorboard,csv` (read back against metrics.jsonl), with their one-line refusals."""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import convscope.train
from convscope import extras
from convscope.cli import main
from convscope.train import trackers
from convscope.train.config import TrainConfig, write_run_config

TINY = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}'
BASE = ["--model", "convnext_atto", "--model-kwargs", TINY, "--data", "synthetic", "--synthetic-size", "64",
        "--eval-limit", "16", "--batch-size", "16", "--lr", "3e-3", "--threads", "1", "--progress", "none"]
TIMING = ("train_img_per_s", "epoch_time_s")


def _history(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-epoch run from flags, with TensorBoard and summary.csv, every epoch's checkpoint kept."""
    out = tmp_path_factory.mktemp("cfg") / "a"
    assert main(["train", *BASE, "--epochs", "3", "--keep-last", "3", "--log", "tensorboard,csv",
                 "--out", str(out)]) == 0
    return out


def test_written_config_repeats_the_run_bit_for_bit(run, tmp_path, capsys):
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written == json.loads((run / "config.json").read_text())        # one dict, two files
    assert written["log"] == ["tensorboard", "csv"] and written["batch_size"] == 16 and written["lr"] == 3e-3
    again = tmp_path / "b"
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(again)]) == 0
    assert (again / "last.safetensors").read_bytes() == (run / "last.safetensors").read_bytes()
    assert (again / "best.safetensors").read_bytes() == (run / "best.safetensors").read_bytes()
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in _history(run)]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in _history(again)] == strip
    assert json.loads((again / "config.json").read_text()) == dict(written, out=str(again))
    # eval reads its options from a file too: the run's last evaluation again
    (tmp_path / "eval.json").write_text(json.dumps({"checkpoint": str(run / "last.safetensors"),
                                                    "data": "synthetic", "limit": 4, "json": True}))
    capsys.readouterr()
    assert main(["eval", "--config", str(tmp_path / "eval.json"), "--limit", "16"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["top1"] == pytest.approx(_history(run)[-1]["top1"]) and r["n"] == 16


def test_tensorboard_and_summary_csv_hold_the_metrics_records(run):
    history = _history(run)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    keys = ["lr", "train_loss", "train_img_per_s", "epoch_time_s", "top1", "top5", "eval_loss"]
    assert sorted(events.Tags()["scalars"]) == sorted(keys)
    for key in keys:
        got = events.Scalars(key)
        assert [e.step for e in got] == [1, 2, 3]
        assert [e.value for e in got] == pytest.approx([h[key] for h in history], rel=1e-6)   # stored as float32
    assert sorted(events.Tags()["images"]) == ["confusion_matrix", "curves"]
    confusion = events.Images("confusion_matrix")[0]
    assert (confusion.step, confusion.width, confusion.height) == (3, 4 * 16, 4 * 16)   # 4 classes, 16 px a cell

    rows = list(csv.DictReader((run / "summary.csv").open()))
    assert list(rows[0]) == ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
    assert [{k: float(v) for k, v in row.items()} for row in rows] == [
        dict(epoch=h["epoch"], train_loss=h["train_loss"], eval_loss=h["eval_loss"], eval_top1=h["top1"],
             eval_top5=h["top5"], lr=h["lr"]) for h in history]


def test_resume_continues_the_trackers_without_repeating_an_epoch(run, tmp_path):
    out = tmp_path / "a"
    shutil.copytree(run, out)
    shutil.rmtree(out / "checkpoints" / "step-00000012")   # as if killed after epoch 3's records, before its save
    resume = ["train", *BASE, "--epochs", "3", "--keep-last", "3", "--log", "tensorboard,csv", "--out", str(out),
              "--resume"]
    assert main(resume) == 0
    assert main(resume) == 0   # resumed after its last epoch: nothing to log again
    history = _history(out)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [row["epoch"] for row in csv.DictReader((out / "summary.csv").open())] == ["1", "2", "3"]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    got = events.Scalars("train_loss")
    assert [e.step for e in got] == [1, 2, 3]
    assert [e.step for e in events.Images("curves")] == [3]
    assert [e.value for e in got] == pytest.approx([h["train_loss"] for h in history], rel=1e-6)


@pytest.fixture
def captured(monkeypatch):
    """`convscope train` stops before any work, keeping the TrainConfig it would run."""
    seen = []

    def fake(cfg: TrainConfig):
        seen.append(cfg)
        raise ValueError("stopped before the work")
    monkeypatch.setattr(convscope.train, "train", fake)
    return seen


def test_the_command_line_overrides_the_file(tmp_path, captured, capsys):
    settings = {"model": "convnext_atto", "--batch-size": 8, "epochs": 5, "seed": 7, "lr": "1e-3",
                "scale": [0.5, 1], "model-kwargs": json.loads(TINY), "channels_last": True, "betas": [0.8, 0.9],
                "log": "csv", "time_budget": "2m"}
    (tmp_path / "run.json").write_text(json.dumps(settings))
    main(["train", "--config", str(tmp_path / "run.json"), "--epochs", "2", "--seed", "0", "--out",
          str(tmp_path / "o")])
    cfg = captured[-1]
    assert (cfg.epochs, cfg.seed) == (2, 0)        # given on the command line, even at its default value
    assert (cfg.model, cfg.batch_size, cfg.lr, cfg.scale, cfg.channels_last) == ("convnext_atto", 8, 1e-3,
                                                                                   (0.5, 1.0), True)
    assert (cfg.model_kwargs, cfg.betas, cfg.log, cfg.time_budget) == (json.loads(TINY), (0.8, 0.9), ("csv",), 120)
    assert cfg.out == str(tmp_path / "o")


@pytest.mark.parametrize("text,needle", [
    ("lrr: 0.1\n", "unknown key 'lrr'; did you mean 'lr'?"),
    ("epochs: x\n", "key 'epochs' (--epochs): invalid int value: 'x'"),
    ("threads: 0\n", "key 'threads' (--threads): expected an integer >= 1"),
    ("amp: fp8\n", "key 'amp' (--amp): invalid choice: 'fp8' (choose from fp32, bf16)"),
    ("log: csv,nope\n", "key 'log' (--log): expected a comma-separated list of tensorboard,csv,wandb,mlflow"),
    ("epochs: null\n", "key 'epochs' (--epochs): expected a value; got null"),
    ("compile: 1\n", "key 'compile' (--compile): expected true or false; got 1"),
    ("ema_warmup: maybe\n", "key 'ema_warmup' (--ema-warmup): expected true or false; got 'maybe'"),
    ("batch_size: 8\nbatch-size: 8\n", "batch_size is given twice"),
    ("config: other.yaml\n", "unknown key 'config'"),
    ("resume: yes please\n", "key 'resume' (--resume): invalid choice: 'yes please' (choose from auto)"),
    ("- lr\n", "expected a mapping of option names to values; got list"),
    ("lr: [1\n", "is not valid YAML"),
    ("data: synthetic\n", "--model is required: give it on the command line or in the --config file"),
])
def test_a_bad_config_file_is_one_line_before_any_work(text, needle, tmp_path, captured, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    model = [] if "model is required" in needle else ["--model", "convnext_atto"]
    assert main(["train", "--config", str(path), *model, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convscope: error:") and needle in err[0], err
    assert not captured and not (tmp_path / "o").exists()


def test_config_file_kinds_and_eval_keys(tmp_path, monkeypatch, capsys):
    (tmp_path / "run.toml").write_text("")
    assert main(["train", "--config", str(tmp_path / "run.toml")]) == 2
    assert "expected a .yaml, .yml or .json file" in capsys.readouterr().err
    (tmp_path / "eval.yaml").write_text("checkpont: w.safetensors\n")
    assert main(["eval", "--config", str(tmp_path / "eval.yaml")]) == 2
    assert "unknown key 'checkpont'; did you mean 'checkpoint'?" in capsys.readouterr().err
    assert main(["eval", "--data", "synthetic"]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    monkeypatch.setattr(extras, "available", lambda module: module != "yaml")
    (tmp_path / "run.yaml").write_text("epochs: 1\n")
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--model", "convnext_atto"]) == 2
    assert "needs pyyaml, which is not installed: pip install 'convscope[lab]'" in capsys.readouterr().err


@pytest.mark.parametrize("tracker,extra", [("tensorboard", "track"), ("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_names_its_extra_before_the_run(tracker, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trackers, "available", lambda module: module != tracker)
    assert main(["train", *BASE, "--log", f"csv,{tracker}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"convscope: error: --log {tracker} needs {tracker}, which is not installed: "
                   f"pip install 'convscope[{extra}]'"]
    assert not (tmp_path / "o").exists()


class _Recorder:
    """A stand-in for wandb and mlflow that records every call (name, args, kwargs)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs)) or self


def test_wandb_and_mlflow_get_the_same_records(tmp_path, monkeypatch):
    wandb, mlflow = _Recorder(), _Recorder()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    out = tmp_path / "o"
    assert main(["train", *BASE, "--epochs", "2", "--log", "wandb,mlflow", "--out", str(out)]) == 0
    history = _history(out)
    logged = [(kw["step"], args[0]) for name, args, kw in wandb.calls if name == "log"]
    assert [s for s, _ in logged] == [1, 2, 2, 2]          # two epochs, then the two images at the last epoch
    assert [values for _, values in logged[:2]] == [{k: v for k, v in h.items() if k not in ("epoch", "step")}
                                                    for h in history]
    assert [sorted(values) for _, values in logged[2:]] == [["curves"], ["confusion_matrix"]]
    assert [name for name, _, _ in wandb.calls if name in ("init", "finish")] == ["init", "finish"]
    metrics = [(kw["step"], args[0]) for name, args, kw in mlflow.calls if name == "log_metrics"]
    assert metrics == [(s, v) for s, v in logged[:2]]
    params = next(args[0] for name, args, _ in mlflow.calls if name == "log_params")
    assert json.loads(params["batch_size"]) == 16 and json.loads(params["log"]) == ["wandb", "mlflow"]
    assert [args[1] for name, args, _ in mlflow.calls if name == "log_image"] == ["curves.png", "confusion_matrix.png"]
    assert mlflow.calls[0][0] == "start_run" and mlflow.calls[-1][0] == "end_run"


@pytest.mark.parametrize("settings", [
    dict(),                                                        # every default, `log: []` among them
    dict(task="sr", model="espcn", sr_scale=3, time_budget=90.0, threads=2, betas=(0.8, 0.99), ema_warmup=False),
    dict(scale=(0.3, 1.0), ratio=(0.5, 2.0), mixup=0.8, channels_last=True, model_kwargs={"dims": [8, 16, 24, 32]},
         warmup_epochs=0.25, min_lr=1e-7, log=("csv",), prefetch=3, input_size=48),
    dict(resume=True), dict(resume="auto"),                      # --resume's optional value, bare and given
])
def test_every_setting_a_run_writes_reads_back(settings, tmp_path, captured):
    cfg = TrainConfig(**dict(dict(model="convnext_atto", out=str(tmp_path / "o")), **settings))
    write_run_config(tmp_path, cfg)
    for name in ("config.yaml", "config.json"):
        main(["train", "--config", str(tmp_path / name)])
        assert captured[-1] == cfg


def _section_blocks(title: str) -> dict[str, list[str]]:
    """The fenced blocks of docs/training.md's section `title`, by language: each bash block as its commands
    (continuation lines joined, comments dropped), each other block as its text."""
    import re

    text = (Path(__file__).parents[2] / "docs" / "training.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        if lang == "bash":
            joined = body.replace("\\\n", " ")
            blocks.setdefault(lang, []).extend(line.split("#", 1)[0].strip() for line in joined.splitlines())
        else:
            blocks.setdefault(lang, []).append(body)
    return {k: [c for c in v if c] for k, v in blocks.items()}


@pytest.mark.slow   # three processes start under torchrun (about 25 s of CPU)
def test_the_shards_section_runs_as_written(tmp_path, monkeypatch):
    """docs/training.md's '## Shards': pack a toy train/ + val/ folder, train one process from the config file,
    then two data-parallel processes under torchrun (the endpoint on a free port), both logging to TensorBoard."""
    import shlex
    import socket
    import subprocess

    import numpy as np
    from PIL import Image

    from ..conftest import SRC

    blocks = _section_blocks("Shards")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for cls in ("a", "b"):
            (tmp_path / "photos" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                    tmp_path / "photos" / split / cls / f"{i}.png")
    (tmp_path / "run.yaml").write_text(blocks["yaml"][0])
    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    for command in blocks["bash"]:
        words = shlex.split(command.replace(":29400", f":{port}"))
        if words[0] == "convscope":
            assert main([*words[1:], "--progress", "none"] if words[1] == "train" else words[1:]) == 0, command
        else:
            assert words[0] == "torchrun", command
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *words[1:], "--progress", "none"],
                                  env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["index.json", "train-000000.tar",
                                                                        "val-000000.tar"]
    for run in ("one", "two"):
        history = _history(tmp_path / "runs" / run)
        assert len(history) == 2 and (tmp_path / "runs" / run / "summary.csv").is_file()
        assert list((tmp_path / "runs" / run / "tensorboard").glob("events.out.tfevents.*"))
