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
