"""Model sources: crafted metadata and pruning specs are refused in one line before anything is built, non-finite
weights are refused at load, optimise's model file carries its description, export leaves the caller's mode."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from convscope.deploy.export import check_module, eval_mode
from convscope.deploy.prune import apply_spec_, prune, pruning_spec, save_pruned
from convscope.layers.fold import prepare_for_inference_
from convscope.models import create_model
from convscope.models.pruning import PRUNING_KEY
from convscope.models.source import META_KEY, WEIGHTS_FORMAT, load_model, load_pruned, save_model_file, source_meta

from ..conftest import run_cli

pytestmark = pytest.mark.timeout(120)

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
META = dict(model="convnext_atto", model_kwargs=TINY, num_classes=2, in_chans=1, input_size=[32, 32],
            load_size=[32, 32], crop_pct=1.0, mean=[0.5], std=[0.25], class_names=["a", "b"])


def _tiny():
    torch.manual_seed(0)
    return create_model("convnext_atto", num_classes=2, in_chans=1, **TINY).eval()


def _write_meta(path, sd, meta):
    """A weights file whose metadata is exactly `meta` (crafted, bypassing save_model_file's own use)."""
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={META_KEY: json.dumps(dict(meta, format=WEIGHTS_FORMAT))})
    return path


@pytest.fixture(scope="module")
def tiny_sd():
    return _tiny().state_dict()


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and len(text) < 400, text
    return text


@pytest.mark.parametrize("change,expect", [
    (dict(model_kwargs=dict(TINY, depths=[1000000, 1, 1, 1])), "block counts from 0 to 1000"),
    (dict(model_kwargs=dict(TINY, dims=[100000, 16, 24, 32])), "above the largest accepted 65536"),
    (dict(model="x" * 5_000_000), "unknown model 'xxxxxxxx"),
    (dict(model_kwargs=dict(TINY, bogus=3)), "['bogus'] are not constructor arguments of convnext_atto"),
    (dict(model_kwargs=dict(TINY, num_classes=5)), "are not constructor arguments"),
    (dict(model_kwargs=dict(TINY, dims=[8, 16, 24, 40])), "do not fit the convnext_atto its metadata describes"),
    (dict(pruning=dict(model="convnext_atto", groups=[])), "'groups' must be a mapping"),
])
def test_crafted_metadata_is_refused_before_building(tmp_path, tiny_sd, change, expect):
    path = _write_meta(tmp_path / "w.safetensors", tiny_sd, dict(META, **change))
    with pytest.raises(ValueError) as e:
        load_model(path)
    assert expect in _one_line(e)


def _pruned_file(tmp_path, **entry):
    model = _tiny()
    prune(model, 0.25)
    spec = pruning_spec(model, "convnext_atto", model_kwargs=TINY)
    path = next(iter(spec["groups"]))
    spec["groups"][path].update(entry)
    out = tmp_path / "pruned.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={PRUNING_KEY: json.dumps(spec)})
    return out, model, spec


@pytest.mark.parametrize("hidden,expect", [
    (0, "must be a positive integer; got '0'"), (-4, "must be a positive integer; got '-4'"),
    ("abc", "must be a positive integer; got 'abc'"), (1e9, "must be a positive integer; got '1000000000.0'"),
    (10 ** 9, "keeps 1000000000 hidden channels of"),
])
def test_crafted_pruning_spec_is_refused(tmp_path, hidden, expect):
    path, _, _ = _pruned_file(tmp_path, hidden=hidden)
    with pytest.raises(ValueError) as e:
        load_pruned(path)
    assert expect in _one_line(e)


def test_pruning_spec_with_no_groups_and_huge_depths_is_refused(tmp_path):
    model = _tiny()
    spec = pruning_spec(model, "convnext_atto", model_kwargs=TINY)
    with pytest.raises(ValueError, match="names no pruned group"):
        apply_spec_(model, dict(spec, groups={}, heads={}, stages={}))
    path = tmp_path / "p.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={PRUNING_KEY: json.dumps(dict(spec, model_kwargs=dict(TINY, depths=[10 ** 6, 1, 1, 1])))})
    with pytest.raises(ValueError, match="block counts from 0 to 1000"):
        load_pruned(path)


def test_non_finite_weights_are_refused_at_load(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    key = "stages.1.blocks.0.conv_dw.weight"
    sd[key] = sd[key].clone()
    sd[key][0, 0, 0, 0] = float("nan")
    path = _write_meta(tmp_path / "nan.safetensors", sd, META)
    with pytest.raises(ValueError) as e:
        load_model(path)
    assert f"nan.safetensors: tensor {key!r} holds NaN or infinity" in _one_line(e)
    model = _tiny()
    prune(model, 0.25)
    with torch.no_grad():
        model.stem[0].weight[0, 0, 0, 0] = float("inf")
    out = save_pruned(model, pruning_spec(model, "convnext_atto", model_kwargs=TINY), tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="tensor 'stem.0.weight' holds NaN or infinity"):
        load_pruned(out)


def test_cli_refuses_crafted_and_non_finite_files(tmp_path, tiny_sd):
    from PIL import Image
    Image.new("L", (28, 28), 128).save(tmp_path / "img.png")
    huge = _write_meta(tmp_path / "huge.safetensors", tiny_sd, dict(META, model_kwargs=dict(TINY, depths=[10 ** 6,
                                                                                                         1, 1, 1])))
    sd = {k: v.clone() for k, v in tiny_sd.items()}
    sd["head.fc.weight"][0, 0] = float("nan")
    nan = _write_meta(tmp_path / "nan.safetensors", sd, META)
    for args in (["predict", "--checkpoint", str(huge), str(tmp_path / "img.png")],
                 ["predict", "--checkpoint", str(nan), str(tmp_path / "img.png")],
                 ["prune", str(nan), "--ratio", "0.3", "--out", str(tmp_path / "out.safetensors")]):
        r = run_cli(*args, timeout=120)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert ("block counts from 0 to 1000" if "huge" in args[-2] else "holds NaN or infinity") in lines[0], lines
    assert not (tmp_path / "out.safetensors").exists()


def test_prepared_model_file_is_described_and_loads(tmp_path, tiny_sd):
    """What optimize writes for a prepared float form: the source's description, form "prepare"; load_model
    rebuilds that form and gives the same outputs."""
    src = _write_meta(tmp_path / "src.safetensors", tiny_sd, META)
    model, _ = load_model(src)
    prepared = prepare_for_inference_(model)
    save_model_file(tmp_path / "model.safetensors", prepared.state_dict(), source_meta(src, "prepare"))
    back, meta = load_model(tmp_path / "model.safetensors")
    assert meta["form"] == "prepare" and meta["class_names"] == ["a", "b"]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), prepared(x))
    r = run_cli("predict", "--checkpoint", str(tmp_path / "model.safetensors"), str(_image(tmp_path)), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def _image(tmp_path):
    from PIL import Image
    path = tmp_path / "img.png"
    Image.new("L", (28, 28), 128).save(path)
    return path


def test_export_leaves_the_callers_mode():
    model = _tiny().train()
    model.head.eval()          # a mixed mode stays mixed
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.head.training and model.stages.training
    check_module(model, torch.randn(1, 1, 32, 32), "tiny")
    assert model.training and not model.head.training and model.stages.training


@pytest.mark.parametrize("entry", [dict(hidden=0), dict(hidden="abc"), dict(hidden=1e9), dict(consumer_bias="x")])
def test_optimize_refuses_a_crafted_pruned_file_in_one_line(tmp_path, capsys, entry):
    from convscope.cli import main
    path, _, _ = _pruned_file(tmp_path, **entry)
    assert main(["optimize", str(path), "--size", "32", "--out", str(tmp_path / "opt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pruning spec's groups[" in err, err
    assert not (tmp_path / "opt").exists()
