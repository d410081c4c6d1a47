"""The HTML report is self-contained and renders in headless Chromium: every chart decodes, every table row is
there. Chromium is a test prerequisite (the Makefile installs it); a missing browser fails, never skips."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch

import convscope
from convscope.analysis.hardware import hardware_peaks
from convscope.analysis.report import compare_report, profile_report, write_report
from convscope.analysis.timing import benchmark
from convscope.analysis.waterline import compare_models, profile_layers


def render(path, tmp_path) -> dict[str, int]:
    """Load `path` in headless Chromium and return the counts the report's script writes into <body>."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed: run `make test` (it installs it) or `apt-get install -y chromium`"
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, f"no DOM from chromium (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1))}


def _machine_rows(peaks: dict) -> int:
    """machine, device, OS, Python; one per compute peak; DRAM, cache (when known), ridge point, date."""
    return 4 + len(peaks["compute_gflops"]) + 1 + bool(peaks.get("cache_bandwidth_gbs")) + 2


@pytest.fixture(scope="module")
def peaks():
    return hardware_peaks("cpu", threads=1, dtypes=("fp32",), budget_s=0.3, cache=False)


@pytest.mark.slow
def test_profile_report_renders(peaks, tmp_path):
    torch.manual_seed(0)
    model = convscope.create_model("convnext_atto")
    prof = profile_layers(model, (1, 3, 64, 64), repeats=2, threads=1, peaks=peaks)
    bench = benchmark(model, (3, 64, 64), batch_sizes=(1, 2), repeats=3, threads=1)
    html = profile_report(prof, benchmark=bench, command="convscope profile convnext_atto --size 64", top=30)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", html)
    assert "convscope profile convnext_atto --size 64" in html and prof.machine["cpu_model"] in html
    path = write_report(html, tmp_path / "report.html")
    marks = render(path, tmp_path)
    expected_rows = (12 + len(prof.by_kind) + len(prof.by_type) + 30 + len(bench.points)
                     + _machine_rows(prof.peaks))
    assert marks["images"] == 2 and marks["images-decoded"] == 2
    assert marks["tables"] == 6 and marks["table-rows"] == expected_rows

    # the check can fail: a chart whose data is not a PNG does not decode
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    marks = render(broken, tmp_path)
    assert marks["images"] == 2 and marks["images-decoded"] == 1


@pytest.mark.slow
def test_compare_report_renders(peaks, tmp_path):
    cmp = compare_models(["convnext_atto", "inception_next_atto"], (1, 3, 64, 64), repeats=2, threads=1,
                         peaks=peaks)
    path = write_report(compare_report(cmp, command="convscope compare ..."), tmp_path / "cmp.html")
    marks = render(path, tmp_path)
    assert marks["images"] == marks["images-decoded"] == 2
    assert marks["tables"] == 2 and marks["table-rows"] == 2 + _machine_rows(cmp.peaks)
