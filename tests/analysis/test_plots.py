"""Charts are PNGs with content: the roofline shows the layer kinds' colours, the lines are where they belong."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import convscope
from convscope.analysis import plots
from convscope.analysis.hardware import hardware_peaks
from convscope.analysis.waterline import profile_layers

from .test_lab_pictures import _assert_inside, _assert_no_overlap


@pytest.fixture(scope="module")
def profile():
    peaks = hardware_peaks("cpu", threads=1, dtypes=("fp32",), budget_s=0.3, cache=False)
    torch.manual_seed(0)
    return profile_layers(convscope.create_model("convnext_atto"), (1, 3, 64, 64), repeats=2, threads=1, peaks=peaks)


def _pixels(png: bytes) -> np.ndarray:
    assert plots.is_png(png)
    return imread(io.BytesIO(png), format="png")[..., :3]


def _has_colour(img: np.ndarray, hex_colour: str, alpha: float = 0.7, tol: float = 0.04) -> bool:
    """Whether some pixels show `hex_colour` drawn with `alpha` over white (the charts' markers)."""
    rgb = alpha * np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]) + (1 - alpha)
    return bool((np.abs(img - rgb).max(axis=-1) < tol).sum() > 20)


def test_roofline_chart(profile, tmp_path):
    path = tmp_path / "roof.png"
    png = plots.roofline_chart(profile, path)
    assert path.read_bytes() == png
    w, h = plots.png_size(png)
    assert w > 500 and h > 400
    img = _pixels(png)
    assert img.std() > 0.05 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # not blank
    # points of both conv kinds are drawn in their colours
    assert _has_colour(img, plots._KIND_COLORS["depthwise conv"])
    assert _has_colour(img, plots._KIND_COLORS["pointwise conv"])


def test_roofline_labels_end_inside_the_axes(profile, figures):
    """The slowest layers' names are drawn inside the plot, even next to the right edge, and off the legend."""
    plots.roofline_chart(profile, label_top=20)
    fig = figures[0]
    ax = fig.axes[0]
    box = ax.get_window_extent(fig.canvas.get_renderer())
    ends = [t.get_window_extent(fig.canvas.get_renderer()).x1 for t in ax.texts]
    assert len(ends) >= 3 and max(ends) <= box.x1 + 0.5
    _assert_inside(fig)
    _assert_no_overlap(fig)


def test_efficiency_gap_and_pareto_charts(profile, tmp_path):
    pts = plots.layer_gap_points(profile)
    assert {p["label"] for p in pts} >= {"depthwise conv", "pointwise conv"}
    png = plots.efficiency_gap_chart(pts, profile.peak_flops, tmp_path / "gap.png")
    assert _pixels(png).std() > 0.05
    models = [dict(name="a", params=3e6, macs=0.5e9, latency_s=0.010, top1=75.0),
              dict(name="b", params=28e6, macs=4.5e9, latency_s=0.100, top1=82.0),
              dict(name="c", params=20e6, macs=4.0e9, latency_s=0.120, top1=80.0),
              dict(name="d", params=5e6, macs=1.0e9, latency_s=0.020, top1=None)]
    png = plots.pareto_chart(models, tmp_path / "pareto.png")
    w, h = plots.png_size(png)
    assert w > 2.5 * h  # three panels side by side when top-1 figures exist
    w2, h2 = plots.png_size(plots.pareto_chart([dict(m, top1=None) for m in models]))
    assert w2 < w  # two panels without them
    with pytest.raises(ValueError):
        plots.efficiency_gap_chart([dict(label="x", flops=0, latency_s=1.0)], 1e9)
    with pytest.raises(ValueError):
        plots.pareto_chart([])


def test_pareto_front():
    items = [dict(latency_s=1.0, top1=70.0), dict(latency_s=2.0, top1=80.0), dict(latency_s=3.0, top1=75.0),
             dict(latency_s=0.5, top1=None), dict(latency_s=2.0, top1=79.0)]
    assert plots.pareto_front(items, "latency_s", "top1") == [0, 1]
    assert plots.pareto_front(items, "latency_s", "top1", maximize_y=False) == [0]
