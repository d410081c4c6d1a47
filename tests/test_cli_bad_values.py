"""Every flag of every command, given generated bad values (hypothesis): exit status 2, one line on stderr naming
the problem, no traceback, and nothing written. In process (`convscope.cli.main`) for speed; a few subprocess
checks confirm the same holds for the real command."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convscope.cli import build_parser, main
from convscope.cli.pretrain import SHARED as PRETRAIN_SHARED
from convscope.models import create_model
from convscope.models.source import save_model_file

from .conftest import run_cli

TINY = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}'

# -- bad values, by kind ---------------------------------------------------------------------------------------
not_a_number = st.sampled_from(["x", "", "1e", "--", "one", "0x"])
non_finite = st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"])


def ints_below(lo: int) -> st.SearchStrategy[str]:
    """Integers < lo, or text that is no integer."""
    return st.one_of(st.integers(max_value=lo - 1, min_value=-10 ** 12).map(str), not_a_number,
                     st.sampled_from(["1.5", "2e3"]))


def floats_outside(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False):
    """Floats outside [lo, hi] (an open end excludes the bound itself too), non-finite ones, or non-numbers."""
    parts = [not_a_number, non_finite]
    if lo is not None:
        parts.append(st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False, allow_infinity=False,
                               min_value=-1e12).map(repr))
    if hi is not None:
        parts.append(st.floats(min_value=hi, exclude_min=not hi_open, allow_nan=False, allow_infinity=False,
                               max_value=1e12).map(repr))
    return st.one_of(*parts)


words = st.sampled_from(["bogus", "CPU", "fp64", "yes", "1", "all", "-", "auto "])
pairs = st.one_of(st.sampled_from(["1", "1,2,3", "a,b", "0,1", "0.9,0.5", "nan,1", "-1,1", ",", "1,inf"]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the commands can be pointed at: a weights file, an image, a plain file and a directory."""
    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=2, in_chans=1, depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
    meta = dict(model="convnext_atto", model_kwargs=dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]), num_classes=2,
                in_chans=1, input_size=[32, 32], load_size=[32, 32], crop_pct=1.0, mean=[0.5], std=[0.25],
                class_names=["a", "b"], data="synthetic")
    save_model_file(root / "w.safetensors", model.state_dict(), meta)
    from PIL import Image
    Image.new("L", (28, 28), 128).save(root / "img.png")
    for c in ("a", "b"):
        (root / "data" / c).mkdir(parents=True)
        Image.new("L", (28, 28), 60 if c == "a" else 200).save(root / "data" / c / "1.png")
    (root / "plain.txt").write_text("not an image, not weights\n")
    (root / "dir").mkdir()
    (root / "opt").mkdir()
    (root / "opt" / "recipe.json").write_text(json.dumps(dict(source=str(root / "w.safetensors"),
                                                              input_size=[1, 1, 32, 32], form=dict(prepare=True))))
    (root / "fp8.json").write_text(json.dumps(dict(source="convnext_atto", input_size=[1, 3, 32, 32],
                                                   form=dict(dtype="fp8"))))
    return root


def paths_bad_for_file(world: Path):
    """Places a file cannot be written: a directory, under a file."""
    return st.sampled_from([str(world / "dir"), str(world / "plain.txt" / "x.html")])


# flag -> strategy of values that must be refused; `None` marks flags that take no value (store_true).
TRAIN = {
    "--model": st.sampled_from(["nope", "convnext_", "resnet50", ""]),
    "--data": st.sampled_from(["/nonexistent/dir", "fashion_mnist", "synthetic2"]),
    "--seed": st.one_of(not_a_number, st.sampled_from(["1.5"])),
    "--epochs": ints_below(1), "--batch-size": ints_below(1),
    "--lr": st.one_of(floats_outside(0, 10, hi_open=True), st.sampled_from(["1e6", "1e300"])),
    "--min-lr": st.one_of(floats_outside(0, None, lo_open=True), st.sampled_from(["1"])),
    "--warmup-epochs": floats_outside(0, None, lo_open=True), "--weight-decay": floats_outside(0, None, lo_open=True),
    "--clip-grad": floats_outside(0, None), "--accum-steps": ints_below(1),
    "--ema-decay": floats_outside(0, 1, lo_open=True), "--label-smoothing": floats_outside(0, 1, lo_open=True),
    "--model-kwargs": st.sampled_from(['{"bogus": 1}', "[1, 2]", "{", '"x"', '{"depths": "x"}',
                                       '{"num_classes": 3}']),
    "--drop-path": floats_outside(0, 1, lo_open=True), "--drop-rate": floats_outside(0, 1, lo_open=True),
    "--msd-samples": ints_below(0), "--msd-drop": floats_outside(0, 1, lo_open=True),
    "--input-size": st.one_of(ints_below(1), st.integers(1, 31).map(str), st.sampled_from(["100000"])),
    "--in-chans": st.one_of(ints_below(1), st.sampled_from(["2", "4", "0"])),
    "--data-limit": ints_below(1), "--eval-limit": ints_below(1),
    "--val-fraction": floats_outside(0, 1), "--crop-pct": floats_outside(0, 1, hi_open=True),
    "--scale": pairs, "--ratio": st.sampled_from(["1", "a,b", "0,1", "2,1", "nan,1", "-1,1", "1,inf"]),
    "--hflip": floats_outside(0, 1, lo_open=True, hi_open=True), "--randaug-ops": ints_below(0),
    "--randaug-magnitude": floats_outside(0, 30, lo_open=True, hi_open=True),
    "--mixup": floats_outside(0, None, lo_open=True), "--cutmix": floats_outside(0, None, lo_open=True),
    "--mix-prob": floats_outside(0, 1, lo_open=True, hi_open=True),
    "--mix-switch-prob": floats_outside(0, 1, lo_open=True, hi_open=True),
    "--on-error": words, "--check-images": words,
    "--synthetic-size": ints_below(2), "--synthetic-classes": ints_below(2), "--synthetic-image-size": ints_below(1),
    "--device": words, "--amp": words, "--workers": ints_below(0), "--threads": ints_below(1),
    "--eval-batch-size": ints_below(1), "--eval-every": ints_below(1), "--checkpoint-every": ints_below(0),
    "--time-budget": st.sampled_from(["0", "-1m", "x", "9q", "nan", "1e999", "0s", "m"]),
    "--keep-last": ints_below(1), "--progress": words, "--dist-timeout": floats_outside(0, None),
    "--init-from": "weights",   # a missing file, a text file, a directory, an image
    "--config": "recipes",   # missing, a directory, not .yaml/.json, a JSON file of unknown keys
    "--log": st.sampled_from(["", ",", "nope", "tensorboard,nope", "wandb;csv"]),
    "--task": words, "--head": words,
    "--pretrained": "weights", "--layer-decay": floats_outside(0, 1, lo_open=True),
    "--head-lr-scale": floats_outside(0, None, lo_open=True),
    "--out": None,  # filled per world: a file, under a file
    "--resume": words, "--channels-last": None, "--compile": None, "--sync-bn": None, "--quiet": None,
}
LAB_SHAPE = {
    "--batch": ints_below(1), "--size": st.sampled_from(["0", "-3", "x", "224x", "1x2x3", "99999999", "²", "4097",
                                                         "32x4097"]),
}
LAB = {
    **LAB_SHAPE,
    "--dtype": words, "--threads": ints_below(1), "--device": words, "--repeats": ints_below(1),
    "--html": "file", "--json": "file",
}
DATA = st.sampled_from(["/nonexistent/dir", "fashion_mnist", "synthetic2", ""])
DEPLOY = {
    "optimize": ({"source": st.sampled_from(["nope", "convnext_", "/nonexistent/w.safetensors"]), **LAB_SHAPE,
                  "--data": DATA, "--limit": ints_below(1), "--max-drop": floats_outside(0, None),
                  "--steps": st.sampled_from([",", "", "fp4", "prepare,fp4"]),
                  "--max-threads": st.one_of(ints_below(1), st.sampled_from(["100000"])),
                  "--repeats": ints_below(1), "--out": None},
                 ["{w}", "--steps", "prepare", "--repeats", "1"]),
    "prune": ({"source": st.sampled_from(["nope", "/nonexistent/w.safetensors"]),
               "--ratio": floats_outside(0, 1, hi_open=True), "--head-ratio": floats_outside(0, 1, hi_open=True),
               "--stage-ratio": floats_outside(0, 1, hi_open=True), "--scopes": st.sampled_from(["", ",", "x",
                                                                                                 "mlp,bogus"]),
               "--importance": words, "--data": DATA, "--batch": ints_below(1), "--batches": ints_below(1),
               "--min-keep": floats_outside(0, 1, lo_open=True), "--quantum": ints_below(1), "--out": None},
              ["{w}"]),
    "deploy": ({"recipe": "recipes", "--source": st.sampled_from(["nope", "/nonexistent/w.safetensors"]),
                "--data": DATA, "--repeats": ints_below(1), "--out": None}, ["{recipe}", "--repeats", "1"]),
    "bench-mixers": ({"--data": DATA, "--epochs": ints_below(1), "--limit-train": ints_below(1),
                      "--limit-eval": ints_below(1), "--mixers": st.sampled_from(["nope", ",", "pooling,nope"]),
                      "--batch-size": ints_below(1), "--lr": floats_outside(0, 10, lo_open=True),
                      "--seed": st.one_of(not_a_number, st.sampled_from(["1.5"])), "--threads": ints_below(1),
                      "--latency-batch": ints_below(1), "--repeats": ints_below(1), "--out": None},
                     ["--data", "synthetic", "--mixers", "pooling", "--limit-train", "16", "--repeats", "1"]),
}
EXPLAIN = {
    "explain": ({"source": st.sampled_from(["nope", "/nonexistent/w.safetensors"]), "images": "images",
                 "--method": st.sampled_from(["", ",", "saliency", "gradcam,nope"]),
                 "--layer": st.sampled_from(["stages.9", "99", "nope"]), "--target": st.sampled_from(["99", "x", "-1"]),
                 "--checkpoint": "weights", "--out": None, "--force": None}, ["{w}", "{img}"]),
    "erf": ({"model": st.sampled_from(["nope", "/nonexistent/w.safetensors"]), "--checkpoint": "weights",
             "--data": DATA, "--images": ints_below(1), "--size": LAB_SHAPE["--size"], "--out": None, "--force": None},
            ["{w}", "--data", "{data}", "--images", "2"]),
    "probe": ({"source": st.sampled_from(["nope", "/nonexistent/w.safetensors"]), "--checkpoint": "weights",
               "--data": DATA, "--layer": st.sampled_from(["x", "9", "-99", "pre-logits"]), "--method": words,
               "--limit": ints_below(1), "--size": LAB_SHAPE["--size"], "--out": None, "--force": None},
              ["{w}", "--data", "{data}", "--limit", "2"]),
}
COMMANDS = {
    "list": ({"--family": st.sampled_from(["nope", "convnext2"]), "--format": words,
              "pattern": st.sampled_from(["zzz*", "nothing"])}, []),
    "info": ({"name": st.sampled_from(["nope", "", "convnext"]), "--json": None}, ["convnext_atto"]),
    "hw": ({"--refresh": None, "--device": words, "--threads": ints_below(1),
            "--dtypes": st.sampled_from(["", "fp64", "fp32,int4", ",", "x"]), "--json": None}, []),
    "profile": ({**LAB, "name": st.sampled_from(["nope"]), "--compile": None, "--train": None, "--layers": None,
                 "--top": ints_below(1), "--clock": words, "--channels-last": None},
                ["convnext_atto", "--size", "32", "--repeats", "1"]),
    "compare": ({**LAB, "names": st.sampled_from(["nope"]), "--channels-last": None},
                ["convnext_atto", "convnext_femto", "--size", "32", "--repeats", "1"]),
    "train": (TRAIN, ["--model", "convnext_atto", "--model-kwargs", TINY, "--data", "synthetic",
                      "--synthetic-size", "64", "--eval-limit", "8", "--epochs", "1", "--progress", "none"]),
    "pretrain": ({**{f: s for f, s in TRAIN.items() if f in PRETRAIN_SHARED}, "--method": words,
                  "--mask-ratio": floats_outside(0, 1), "--ignore-labels": None},
                 ["--method", "rotnet", "--model", "convnext_atto", "--model-kwargs", TINY, "--data", "synthetic",
                  "--synthetic-size", "64", "--eval-limit", "8", "--epochs", "1", "--progress", "none"]),
    "eval": ({"--checkpoint": "weights", "--config": "recipes", "--data": st.sampled_from(["/nonexistent", "nope"]),
              "--split": st.sampled_from(["a", "b"]), "--batch-size": ints_below(1), "--limit": ints_below(1),
              "--workers": ints_below(0), "--device": words, "--json": None,
              "--window": LAB_SHAPE["--size"], "--stride": LAB_SHAPE["--size"],
              "--model": st.sampled_from(["nope", "convnext_", ""]),
              "--model-kwargs": st.sampled_from(["[1, 2]", "{", '"x"', '{"mlp_act": "gelu"}'])},
             ["--checkpoint", "{w}", "--data", "{data}", "--limit", "2"]),
    "predict": ({"--checkpoint": "weights", "images": "images", "--topk": ints_below(1), "--device": words,
                 "--json": None, "--out": None}, ["--checkpoint", "{w}", "{img}"]),
    "weights": ({"weights_command": st.sampled_from(["nope", "lists", ""])}, []),
    "data": ({"data_command": st.sampled_from(["nope", "packs", ""])}, []),
    "atlas": ({"atlas_command": st.sampled_from(["nope", "", "convnext_", "zzz*"])}, []),
    "export-hub": ({"run": "weights", "--out": None, "--push": st.sampled_from(["nope", "a/b/c", "/x", "a b/c"]),
                    "--private": None}, ["{data}", "--out", "hub_out"]),
    **DEPLOY,
    **EXPLAIN,
}


def _flags(command: str) -> set[str]:
    """Every option and positional of `command` in the real parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    out = set()
    for a in sub._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        out.add(next((o for o in a.option_strings if o.startswith("--")), a.dest))
    return out


def test_every_command_is_walked():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_bad_values(command):
    """A new flag must get its bad values here."""
    table, _ = COMMANDS[command]
    assert _flags(command) == set(table), f"{command}: flags without bad values (or gone): " \
        f"{sorted(_flags(command) ^ set(table))}"


def _strategy(command: str, flag: str, world: Path):
    table, _ = COMMANDS[command]
    s = table[flag]
    if flag == "--out":
        return st.sampled_from([str(world / "plain.txt"), str(world / "plain.txt" / "run")])
    if s == "file":
        return paths_bad_for_file(world)
    if s == "weights":
        return st.sampled_from([str(world / "missing.safetensors"), str(world / "plain.txt"), str(world / "dir"),
                                str(world / "img.png")])
    if s == "recipes":   # missing, a directory, not JSON, not UTF-8, a form that does not exist
        return st.sampled_from([str(world / "missing.json"), str(world / "dir"), str(world / "plain.txt"),
                                str(world / "img.png"), str(world / "fp8.json")])
    if s == "images":
        return st.sampled_from([str(world / "missing.png"), str(world / "plain.txt"), str(world / "w.safetensors")])
    return s


def _fill(base: list[str], world: Path) -> list[str]:
    subs = {"{w}": str(world / "w.safetensors"), "{img}": str(world / "img.png"), "{data}": str(world / "data"),
            "{recipe}": str(world / "opt" / "recipe.json")}
    return [subs.get(b, b) for b in base]


def _args(command: str, flag: str, value: str, world: Path) -> list[str]:
    """The command's valid base arguments with `flag` given `value` (a positional replaced by it)."""
    _, raw = COMMANDS[command]
    base = _fill(raw, world)
    if not flag.startswith("--"):
        if flag == "images":   # the last positional (predict's and explain's)
            return [command, *base[:-1], value]
        rest = [b for b, r in zip(base, raw, strict=True) if b not in ("convnext_atto", "convnext_femto")
                and r not in ("{w}", "{recipe}")]
        return [command, value, *rest]
    if flag in base:   # the bad value replaces the base's
        i = base.index(flag)
        base = base[:i] + base[i + 2:]
    return [command, *base, f"{flag}={value}"]   # `=`: a negative number or an empty string is the flag's value


BAD = [(c, f) for c, (table, _) in sorted(COMMANDS.items()) for f, s in sorted(table.items()) if s is not None
       or f == "--out"]


@pytest.mark.parametrize("command,flag", BAD, ids=[f"{c}{f}" for c, f in BAD])
def test_bad_value_exits_2_with_one_line(command, flag, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    before = {p for p in world.rglob("*")}

    @settings(max_examples=4, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(value=_strategy(command, flag, world))
    def check(value):
        args = _args(command, flag, value, world)
        rc = main(args)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert rc == 2, f"{args}: exit {rc}; stderr {err!r}"
        assert len(lines) == 1 and lines[0].startswith("convscope"), f"{args}: stderr {err!r}"
        assert "Traceback" not in err
        assert not [p for p in tmp_path.iterdir()], f"{args} left {list(tmp_path.iterdir())}"
        assert {p for p in world.rglob("*")} == before, f"{args} wrote into {world}"

    check()


@pytest.mark.parametrize("command", ["list", "info", "profile", "train", "eval", "predict"])
def test_the_base_commands_succeed(command, world, tmp_path, capsys, monkeypatch):
    """The valid arguments the bad values are put into work, so a refusal above is the bad value's doing.
    (hw and compare measure for seconds; their bad values fail on their own flags before any measuring.)"""
    monkeypatch.chdir(tmp_path)
    _, base = COMMANDS[command]
    base = _fill(base, world)
    args = [command, *base] if command != "list" else [command, "convnext*"]
    if command == "train":
        args += ["--out", str(tmp_path / "run"), "--threads", "1"]
    assert main(args) == 0, capsys.readouterr().err


def test_the_real_command_says_one_line(world, tmp_path):
    """Two subprocess checks: a value argparse refuses, and one the library refuses."""
    for args in (["train", "--model", "convnext_atto", "--epochs", "x"],
                 ["predict", "--checkpoint", str(world / "w.safetensors"), "--topk", "-2", str(world / "img.png")]):
        proc = run_cli(*args, cwd=tmp_path, timeout=600)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert not list(tmp_path.iterdir())
