"""`convscope hw`, `profile` and `compare`: output, files written, and one-line errors with status 2."""
from __future__ import annotations

import json

import pytest

from convscope.cli import main

from ..conftest import run_cli


@pytest.fixture
def env(tmp_path, monkeypatch):
    """The hardware cache in a fresh folder (run_cli passes this process's environment on)."""
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def test_hw_measures_then_reads_the_cache(env, tmp_path):
    first = run_cli("hw", "--device", "cpu", "--threads", "1", "--dtypes", "fp32", "--json")
    assert first.returncode == 0, first.stderr
    peaks = json.loads(first.stdout)
    assert peaks["compute_gflops"]["fp32"] > 0 and peaks["bandwidth_gbs"] > 0 and not peaks["cached"]
    again = run_cli("hw", "--device", "cpu", "--threads", "1", "--dtypes", "fp32")
    assert again.returncode == 0 and "cached from" in again.stdout and "GFLOP/s" in again.stdout
    assert len(list((tmp_path / "cache").glob("hardware-*.json"))) == 1


@pytest.mark.slow
def test_profile_with_layers_writes_html_and_json(env, tmp_path):
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    proc = run_cli("profile", "convnext_atto", "--size", "64", "--batch", "2", "--threads", "1", "--repeats", "2",
                   "--layers", "--top", "5", "--html", str(html), "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "convnext_atto 2x3x64x64" in out  # the count summary
    assert "depthwise conv" in out and "pointwise conv" in out and "waterline bound" in out
    data = json.loads(js.read_text())
    assert data["input_size"] == [2, 3, 64, 64] and data["threads"] == 1
    text = html.read_text()
    assert "convscope profile convnext_atto --size 64 --batch 2" in text and "data:image/png;base64," in text


@pytest.mark.slow
def test_compare(env, tmp_path):
    proc = run_cli("compare", "convnext_atto", "poolformerv2_s12", "--size", "64", "--threads", "1", "--repeats", "2",
                   "--json", str(tmp_path / "c.json"))
    assert proc.returncode == 0, proc.stderr
    assert "convnext_atto" in proc.stdout and "poolformerv2_s12" in proc.stdout
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["convnext_atto", "poolformerv2_s12"]


def test_error_is_one_line_with_status_2():
    proc = run_cli("profile", "convnxt_atto")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convscope: error:") and "did you mean convnext_atto" in lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["profile", "convnext_atto", "--size", "64x"], "argument --size: expected a positive integer or HxW"),
    (["profile", "convnext_atto", "--size", "4097"], "at most 4096 per side; got '4097'"),
    (["compare", "convnext_atto", "convnext_femto", "--size", "64x4097"], "at most 4096 per side"),
    (["profile", "convnext_atto", "--batch", "0"], "argument --batch: expected an integer >= 1; got '0'"),
    (["profile", "convnext_atto", "--batch", "4096", "--size", "4096"], "GiB input; choose a smaller batch"),
    (["profile", "convnext_atto", "--size", "16"], "needs inputs of at least"),
    (["profile", "convnext_atto", "--size", "32", "--threads", "0"], "argument --threads: expected an integer >= 1"),
    (["hw", "--threads", "100000"], "argument --threads: expected an integer >= 1 and <= 1024"),
    (["compare", "convnext_atto", "nosuchnet"], "unknown model 'nosuchnet'"),
    (["hw", "--device", "tpu"], "device must be"),
    (["hw", "--dtypes", "fp64"], "dtypes must be"),
])
def test_bad_input_exits_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convscope") and "error:" in err[0] and needle in err[0], err
