"""The optimiser and the `convscope optimize` / `deploy` commands: one table per step, the recipe and the model
written, the recipe applied again; errors a user can fix exit with status 2 and one line."""
from __future__ import annotations

import json

import torch

import convscope
from convscope.deploy.optimize import Form, Recipe, build_form, optimize
from convscope.models.source import load_model

from ..conftest import run_cli


def test_optimize_keeps_exact_fold_and_reports_each_step():
    model = convscope.create_model("unireplknet_a", num_classes=5).eval()
    logs = []
    r = optimize(model, (1, 3, 32, 32), steps=("prepare", "channels_last", "threads"), max_threads=1, repeats=2,
                 log=logs.append)
    assert r.best.form.prepare  # exact: kept unless clearly slower
    assert [s.step for s in r.steps] == ["prepare", "channels_last"]  # one thread only: nothing to try
    assert all("median ms" in s.table() for s in r.steps)
    assert r.isa["capability"] and "machine:" in logs[0]
    assert r.best.out_rel_err < 1e-4


def test_build_form_matches_eager():
    model = convscope.create_model("inception_next_atto", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    run, info = build_form(model, Form(prepare=True, channels_last=True), x)
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), rtol=1e-4, atol=1e-4)


def test_cli_optimize_then_deploy(tmp_path):
    out = tmp_path / "opt"
    r = run_cli("optimize", "convnext_atto", "--size", "32", "--steps", "prepare,channels_last,threads",
                "--max-threads", "1", "--repeats", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "== channels_last" in r.stdout and "fastest form within the budget" in r.stdout
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["source"] == "convnext_atto" and recipe["input_size"] == [1, 3, 32, 32]
    assert recipe["machine"]["isa"] and (out / "model.safetensors").is_file()
    model, meta = load_model(out / "model.safetensors")   # it describes itself: predict / eval take it
    assert meta["model"] == "convnext_atto" and meta["form"] in ("train", "prepare")
    assert len(meta["class_names"]) == 1000
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    Recipe.load(out / "recipe.json")
    r = run_cli("deploy", str(out / "recipe.json"), "--repeats", "2", "--out", str(tmp_path / "dep"))
    assert r.returncode == 0, r.stderr
    assert "items/s" in r.stdout and (tmp_path / "dep" / "model.safetensors").is_file()


def test_cli_errors(tmp_path):
    r = run_cli("optimize", "convnext_atto", "--steps", "prepare,fp4")
    assert r.returncode == 2 and "--steps must be some of" in r.stderr
    r = run_cli("deploy", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "no recipe at" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"source": "convnext_atto"}')
    r = run_cli("deploy", str(bad))
    assert r.returncode == 2 and "not a deploy recipe" in r.stderr
    r = run_cli("optimize", "convnext_atto", "--data", "fashion-mnist", "--steps", "prepare")
    assert r.returncode == 2 and "needs a trained checkpoint" in r.stderr
