"""The mixer bench: one skeleton, only the token mixer changes; a few training steps through the engine, and the
bench's table / plot writing on a tiny synthetic run."""
from __future__ import annotations

import json

import pytest
import torch

from convscope.bench.mixers import bench_variants, pareto_front, run_mixer_bench, write_outputs
from convscope.models import create_model, list_models
from convscope.train import TrainConfig, train


def test_only_the_mixer_changes():
    names = list_models("mixer_bench_*")
    assert {"mixer_bench_tvconv", "mixer_bench_dcls", "mixer_bench_deform", "mixer_bench_sgconv2d",
            "mixer_bench_attention", "mixer_bench_pooling"} <= set(names)
    with torch.device("meta"):
        shapes = {}
        for n in names:
            m = create_model(n)
            shapes[n] = [(k, tuple(v.shape)) for k, v in m.state_dict().items() if ".token_mixer." not in k]
    ref = shapes["mixer_bench_pooling"]
    for n, s in shapes.items():
        if n != "mixer_bench_attention":  # attention stages use Linear MLPs on tokens: same sizes, other shapes
            assert s == ref, n


def test_tvconv_variant_takes_only_its_size():
    m = create_model("mixer_bench_tvconv", input_size=32, num_classes=3).eval()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="32x32"):
        m(torch.randn(1, 3, 64, 64))


def test_two_variants_train_a_few_steps_through_the_engine(tmp_path):
    for name in ("mixer_bench_deform", "mixer_bench_dcls"):
        cfg = TrainConfig(model=name, data="synthetic", out=str(tmp_path / name), epochs=1, batch_size=16,
                          synthetic_size=48, synthetic_classes=3, input_size=32, quiet=True, progress="none",
                          device="cpu", eval_limit=16)
        res = train(cfg)
        assert res.train_images == 48 and 0 <= res.final["top1"] <= 100
        assert torch.isfinite(torch.tensor(res.final["loss"]))


def test_bench_writes_table_json_and_plot(tmp_path):
    result = run_mixer_bench("synthetic", 1, 32, limit_eval=16, mixers=["pooling", "sgconv2d"], batch_size=16,
                             repeats=2, log=lambda *_: None)
    assert [r.mixer for r in result.rows] == ["pooling", "sgconv2d"]
    sg = result.rows[1]
    assert sg.deploy_latency_ms is not None and sg.deploy_max_abs_err < 1e-4  # SGConv keeps its kernel
    assert result.rows[0].deploy_latency_ms is None  # pooling has no deploy form
    files = write_outputs(result, tmp_path, command="convscope bench-mixers")
    text = (tmp_path / "mixer_bench.md").read_text()
    assert "| sgconv2d |" in text and "load average" in text
    assert json.loads((tmp_path / "mixer_bench.json").read_text())["rows"][0]["model"] == "mixer_bench_pooling"
    assert any(f.endswith(".png") for f in files)
    with pytest.raises(ValueError, match="no mixer bench variant"):
        bench_variants(["nope"])


def test_pareto_front():
    pts = [(1.0, 50.0), (2.0, 60.0), (1.5, 40.0), (3.0, 55.0), (4.0, 70.0)]
    assert pareto_front(pts) == [0, 1, 4]
