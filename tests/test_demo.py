"""`make demo` end to end at smoke size: real Fashion-MNIST, one short epoch, evaluation, the time breakdown, the
layer profile and its HTML report. The full run (>= 90% in < 10 min) is recorded in the README; this test keeps
every step of the script working."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from .conftest import SRC

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"

pytestmark = pytest.mark.slow


def test_demo_smoke_run(tmp_path):
    out, report = tmp_path / "run", tmp_path / "report.html"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(DEMO), "--smoke", "--threads", "1", "--out", str(out),
                           "--report", str(report)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "on 512 Fashion-MNIST test images" in text
    assert "time budget 9m" in text and "1.00 of at most 1 epochs (8 steps) fit" in text
    assert "where the time went" in text and "backward" in text and "per-layer waterline" in text
    for kind in ("pointwise conv", "depthwise conv"):
        assert kind in text
    assert (out / "metrics.jsonl").read_text().count("\n") == 1
    assert load_file(str(out / "best.safetensors"))["stem.0.weight"].shape[1] == 1   # trained with in_chans=1
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 2 and "<table" in html


def _demo_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convscope_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fp32,bf16,chosen", [(0.20, 0.12, "bf16"), (0.20, 0.195, "fp32"), (0.20, 0.30, "fp32")])
def test_demo_keeps_bf16_only_where_amx_makes_it_measurably_faster(fp32, bf16, chosen):
    demo = _demo_module()
    calls = []

    def measure(amp):
        calls.append(amp)
        return {"fp32": fp32, "bf16": bf16}[amp]

    assert demo.choose_amp(1, frozenset({"avx512f", "avx512_bf16"}), measure) == \
        ("fp32", "fp32 (no AMX-BF16 on this CPU; nothing measured)")
    assert calls == []                                     # no AMX: nothing is timed
    amp, why = demo.choose_amp(1, frozenset({"amx_tile", "amx_bf16", "avx512f"}), measure)
    assert amp == chosen and calls == ["fp32", "bf16", "fp32"]
    assert f"measured {1000 * fp32:.0f} ms per fp32 step, {1000 * bf16:.0f} ms per bf16 step" in why


def test_demo_step_timer_runs_both_dtypes():
    demo = _demo_module()
    for amp in ("fp32", "bf16"):
        assert 0 < demo.step_seconds(amp, threads=1, batch=4, steps=1, rounds=1) < 30
