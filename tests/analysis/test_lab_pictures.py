"""The lab's pictures as a user sees them (issue 24 item 4): every label inside the figure, no two names on top of
each other, one meaning per efficiency word, the Pareto axes saying at which resolution each quantity was taken,
no test text on the page, `--top` honoured by the HTML, and implausible ceilings called out."""
from __future__ import annotations

import itertools
import re

import pytest
import torch
from matplotlib.text import Text

from convscope.analysis import plots, report
from convscope.analysis.ceilings import ceiling_warnings
from convscope.analysis.hardware import HardwarePeaks, machine_info
from convscope.analysis.hardware.peaks import _cache_key
from convscope.analysis.timing import LatencyStats
from convscope.analysis.waterline import Comparison
from convscope.analysis.waterline.compare import ModelRow
from convscope.cli import main
from convscope.utils import threads_set

PEAKS = dict(compute_gflops={"fp32": 100.0}, bandwidth_gbs=20.0, cache_bandwidth_gbs=80.0, llc_bytes=32 << 20,
             measured_at="2026-01-01T00:00:00+00:00", probe_gflops={"fp32": {}}, load_average=[0.5, 0.5, 0.5])
MACHINE = dict(cpu_model="test cpu", physical_cores=2, logical_cpus=2, threads=1, torch_version="2", device="cpu")


def _texts(fig) -> list[Text]:
    """The figure's visible non-empty texts but tick labels: titles, axis labels, annotations, legends."""
    found = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    ticks = {id(t) for ax in fig.axes for t in ax.get_xticklabels(which="both") + ax.get_yticklabels(which="both")}
    return [t for t in found if id(t) not in ticks and t.axes is not None or t.figure is fig and id(t) not in ticks]


def _boxes(fig) -> list[tuple[str, object]]:
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]


def _assert_inside(fig) -> None:
    """Every text (and, through the tight box, every drawn tick label) lies within the figure."""
    box = fig.bbox
    for text, b in _boxes(fig):
        assert box.x0 - 0.5 <= b.x0 and b.x1 <= box.x1 + 0.5 and box.y0 - 0.5 <= b.y0 and b.y1 <= box.y1 + 0.5, \
            f"{text!r} at {b} runs out of the figure {box}"
    tight = fig.get_tightbbox(fig.canvas.get_renderer())
    assert tight.x0 >= -0.01 and tight.y0 >= -0.01 and tight.x1 <= fig.bbox_inches.x1 + 0.01 \
        and tight.y1 <= fig.bbox_inches.y1 + 0.01, (tight, fig.bbox_inches)


def _assert_no_overlap(fig) -> None:
    for (ta, a), (tb, b) in itertools.combinations(_boxes(fig), 2):
        assert not a.overlaps(b), f"{ta!r} and {tb!r} overlap"


def _row(name: str, latency_s: float, top1: float | None = 80.0) -> ModelRow:
    lat = LatencyStats.from_times([latency_s] * 3)
    return ModelRow(name=name, params=5_000_000, macs=1_000_000_000, flops=420_000_000, bytes=50_000_000,
                    activations=3_000_000, latency=lat, bound_s=latency_s / 4, peak_flops=100e9, top1=top1)


def _comparison(rows: list[ModelRow], size: int = 64, peaks: dict | None = None) -> Comparison:
    return Comparison(rows=rows, input_size=(1, 3, size, size), dtype="fp32", channels_last=False, threads=1,
                      device="cpu", machine=MACHINE, peaks=dict(PEAKS, **(peaks or {})))


def test_gap_chart_labels_stay_inside(figures):
    """A long label on the rightmost point ('pointwise conv (46.0% eff.)' used to run past the right edge)."""
    pts = [dict(label="depthwise conv", flops=2e7, latency_s=0.004),
           dict(label="pointwise conv with a long name", flops=2e9, latency_s=0.0435)]
    plots.efficiency_gap_chart(pts, 100e9)
    _assert_inside(figures[0])
    _assert_no_overlap(figures[0])


def test_compare_names_neither_collide_nor_spill(figures):
    """Five models with near-identical counts and latencies, long names: every name inside, none on another."""
    rows = [_row(f"inception_next_atto_variant_{i}", 0.0100 + 1e-5 * i, 80.0 + 0.01 * i) for i in range(5)]
    html = report.compare_report(_comparison(rows))
    assert len(figures) == 2 and "data:image/png" in html
    for fig in figures:
        _assert_inside(fig)
        _assert_no_overlap(fig)
        shown = " ".join(t for t, _ in _boxes(fig))
        assert all(r.name in shown for r in rows)


_EFF = re.compile(r"eff(?:\.|iciency|icient)", re.I)


def _bare_effs(text: str) -> list[str]:
    """Efficiency words not spelled 'comp. eff.' or 'waterline eff.' (nor 'efficiency gap', the chart's name)."""
    return [text[max(m.start() - 12, 0):m.end() + 4] for m in _EFF.finditer(text)
            if not re.search(r"(comp\. |waterline )$", text[:m.start()])
            and not text[m.start():].lower().startswith("efficiency gap")]


def test_one_meaning_per_efficiency_word(figures):
    html = report.compare_report(_comparison([_row("convnext_atto", 0.01), _row("convnext_femto", 0.012)]))
    headers = re.findall(r"<(?:th|h2|title|figcaption|caption)[^>]*>(.*?)</", html, re.S)
    assert "comp. eff. %" in headers and "waterline eff. %" in headers
    assert [h for h in headers if _bare_effs(h)] == []
    gap = figures[0]
    titles = [t for t, _ in _boxes(gap)]
    assert any("comp. eff. = achieved / peak FLOP/s" in t for t in titles)
    assert [t for t in titles if _bare_effs(t)] == []
    assert any(t.endswith("% comp. eff.)") for t in titles)


def test_pareto_axes_state_each_resolution(figures):
    models = [dict(name="a", params=3e6, macs=0.5e9, latency_s=0.010, top1=75.0, top1_px=224),
              dict(name="b", params=28e6, macs=4.5e9, latency_s=0.100, top1=82.0, top1_px=224)]
    plots.pareto_chart(models, latency_px=64)
    top1_ax = figures[0].axes[2]
    assert top1_ax.get_xlabel() == "measured latency (ms) at 64 px"
    assert top1_ax.get_ylabel() == "official ImageNet top-1 (%) at 224 px"
    assert figures[0].axes[0].get_ylabel() == "measured latency (ms) at 64 px"
    # the same resolution: nothing to warn about
    assert plots.pareto_labels(models, 224) == ("measured latency (ms)", "official ImageNet top-1 (%)")
    mixed = [dict(models[0], top1_px=288), models[1]]
    assert plots.pareto_labels(mixed, 64)[1] == "official ImageNet top-1 (%) at each card's size, 224-288 px"
    # through the compare report: the cards' 224 against the 64 px measured
    report.compare_report(_comparison([_row("convnext_atto", 0.01, 75.7)], size=64))
    assert figures[-1].axes[2].get_ylabel() == "official ImageNet top-1 (%) at 224 px"


def test_footer_holds_no_test_text(figures):
    html = report.compare_report(_comparison([_row("convnext_atto", 0.01)]))
    footer = re.search(r"<footer>(.*?)</footer>", html, re.S).group(1)
    assert "Rendered" not in html and "render-check" not in html and "Rendering check" not in footer
    assert "setAttribute('data-images-decoded'" in html  # the headless check still has its counts


def test_ceiling_warnings():
    assert ceiling_warnings(PEAKS, 2) == []
    llc = ceiling_warnings(dict(PEAKS, cache_bandwidth_gbs=10.0), 2)
    assert len(llc) == 1 and "last-level-cache bandwidth (10.0 GB/s) is below the DRAM bandwidth (20.0" in llc[0]
    load = ceiling_warnings(dict(PEAKS, load_average=[5.25, 1.0, 1.0]), 4)
    assert len(load) == 1 and "load average of 5.25 on 4 cores" in load[0]
    assert ceiling_warnings(dict(PEAKS, load_average=[3.0, 1.0, 1.0]), 4) == []
    html = report.compare_report(_comparison([_row("convnext_atto", 0.01)], peaks=dict(cache_bandwidth_gbs=10.0)))
    assert "<p class='note warning'>warning: the last-level-cache bandwidth (10.0 GB/s)" in html


@pytest.mark.slow
def test_profile_html_honours_top_and_warns(tmp_path, monkeypatch, capsys):
    """Through the CLI on a tiny model, against cached ceilings that cannot be right (LLC below DRAM, load 99)."""
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path))
    with threads_set(1):
        machine = machine_info(torch.device("cpu"))
    HardwarePeaks(machine=machine, compute_gflops={"fp32": 50.0}, bandwidth_gbs=20.0, cache_bandwidth_gbs=5.0,
                  llc_bytes=32 << 20, measured_at="2026-01-01T00:00:00+00:00",
                  details={"fp32": {"kernel": "matmul", "matmul": {"gflops": 50.0}}, "bandwidth": {"gbs": 20.0},
                           "busy": {"load_average": [99.0, 99.0, 99.0]}}).to_json(
        tmp_path / f"hardware-{_cache_key(machine)}.json")
    out = tmp_path / "p.html"
    assert main(["profile", "convnext_atto", "--size", "32", "--threads", "1", "--repeats", "1", "--top", "3",
                 "--html", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "warning: the last-level-cache bandwidth (5.0 GB/s) is below the DRAM bandwidth (20.0 GB/s)" in stdout
    assert "warning: the ceilings were measured at a load average of 99.00" in stdout
    html = out.read_text()
    table = re.search(r"<h2>Slowest 3 of \d+ modules</h2>\s*<table>.*?<tbody>(.*?)</tbody>", html, re.S)
    assert table and table.group(1).count("<tr>") == 3
    assert html.count("class='note warning'") == 2
    headers = re.findall(r"<(?:th|h2|td)>([^<]*eff[^<]*)</", html)  # the summary's names are in its first column
    assert "waterline eff. %" in headers and any(h.startswith("comp. eff. (achieved / peak FLOP/s") for h in headers)
    assert [h for h in headers if _bare_effs(h)] == []
