"""Charts of the efficiency lab (matplotlib, Agg, PNG): roofline/waterline, efficiency gap, latency Pareto.

Every `*_figure` function returns the figure, every `*_chart` function the same figure as PNG bytes (also
written when `path` is given). Figures are built on a `matplotlib.figure.Figure` with the Agg canvas, never
through pyplot, so nothing depends on a display or on global state; their constrained layout, legends beside or
below the axes instead of inline names, and axes widened for annotations keep every label inside the figure
and off every other label.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..files import atomic_write_bytes
from .waterline import LayerProfile

EFFICIENCY_LINES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
_KIND_COLORS = {"depthwise conv": "#d62728", "pointwise conv": "#1f77b4", "conv": "#2ca02c",
                "grouped conv": "#9467bd", "linear": "#17becf", "norm": "#ff7f0e", "activation": "#8c564b",
                "pool": "#e377c2", "glue": "#7f7f7f"}


def _figure(width: float, height: float) -> Figure:
    """A figure with the Agg canvas attached (so it can be drawn and measured) and constrained layout, which
    keeps titles, axis labels and legends placed outside the axes inside the figure."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure, path: str | os.PathLike | None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)  # constrained layout already keeps every label inside
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


def _color(kind: str, extra: dict[str, str]) -> str:
    if kind in _KIND_COLORS:
        return _KIND_COLORS[kind]
    palette = ["#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94"]
    return extra.setdefault(kind, palette[len(extra) % len(palette)])


def _fmt_eff(e: float) -> str:
    return f"{100 * e:g}%"


def _style(i: int) -> dict[str, str]:
    """A distinct colour and marker for the i-th item of a legend (ten colours, then the next marker)."""
    return dict(color=f"C{i % 10}", marker="osD^vPX*"[(i // 10) % 8])


def _legend_columns(labels: Sequence[str], width_in: float, most: int) -> int:
    """How many legend columns of 7-point `labels` fit side by side across `width_in` inches (at most `most`)."""
    column_pt = 4.2 * max((len(t) for t in labels), default=1) + 30  # the widest label, marker and gap
    return max(1, min(most, len(labels), int(72 * width_in // column_pt)))


def _fit_annotations(fig: Figure, ax) -> None:
    """Widen the (log) x axis to the right until every annotation on `ax` ends inside the axes, measured with
    the renderer: a label near the right edge would otherwise run past the plot and be cut off."""
    for _ in range(8):
        fig.draw_without_rendering()  # runs the layout, which places the axes
        renderer = fig.canvas.get_renderer()
        box = ax.get_window_extent(renderer)
        over = max((t.get_window_extent(renderer).x1 - box.x1 for t in ax.texts), default=0.0)
        if over <= 0:
            return
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, hi * 10 ** (math.log10(hi / lo) * (over + 6) / box.width))


def _keep_apart(fig: Figure, ax, most: int) -> None:
    """Keep the first `most` annotations on `ax` that overlap no annotation kept before them (as drawn)."""
    renderer = fig.canvas.get_renderer()
    kept: list = []
    for t in list(ax.texts):
        box = t.get_window_extent(renderer)
        if len(kept) == most or any(box.overlaps(k) for k in kept):
            t.remove()
        else:
            kept.append(box)


def roofline_figure(profile: LayerProfile, *, title: str | None = None, label_top: int = 6) -> Figure:
    """Each layer as a point (arithmetic intensity, attained GFLOP/s) under the measured roofs: the compute
    peak of the profile's dtype and the DRAM bandwidth slope (and the last-level-cache slope, dashed).
    Point area is proportional to the layer's share of the time; up to `label_top` of the slowest layers are
    named, no name over another (the x axis widened so that every name ends inside the plot). Layers without
    FLOPs or bytes (pure data movement, glue without work) cannot sit on log axes and are counted in the legend
    title instead."""
    peak = profile.peak_flops / 1e9
    bw = profile.bandwidth / 1e9
    cache_bw = profile.peaks.get("cache_bandwidth_gbs")
    rows = [r for r in profile.layers if r.flops > 0 and r.bytes > 0 and r.time_s > 0]
    hidden = len(profile.layers) - len(rows)
    total = sum(r.time_s for r in profile.layers) or 1.0

    fig = _figure(10.5, 5.6)
    ax = fig.add_subplot()
    xs = [r.intensity for r in rows] or [1.0]
    ys = [r.attained_flops / 1e9 for r in rows] or [1.0]
    xlo = min(min(xs) / 3, peak / bw / 30)
    xhi = max(max(xs) * 3, peak / bw * 30)
    grid = [xlo * (xhi / xlo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [min(peak, bw * x) for x in grid], color="black", lw=2,
            label=f"roof: {peak:.0f} GFLOP/s {profile.dtype}, {bw:.1f} GB/s DRAM")
    if cache_bw:
        ax.plot(grid, [min(peak, cache_bw * x) for x in grid], color="black", lw=1, ls="--",
                label=f"last-level cache {cache_bw:.0f} GB/s")
    for kernel, g in profile.peaks.get("probe_gflops", {}).get(profile.dtype, {}).items():
        if g < 0.95 * peak:  # a slower dense kernel (e.g. the BLAS behind torch.mm and nn.Linear)
            ax.plot(grid, [min(g, bw * x) for x in grid], color="grey", lw=1, ls=":",
                    label=f"{'torch.mm / nn.Linear' if kernel == 'matmul' else kernel} {g:.0f} GFLOP/s")
    extra: dict[str, str] = {}
    for kind in sorted({r.kind for r in rows}):
        sel = [r for r in rows if r.kind == kind]
        ax.scatter([r.intensity for r in sel], [r.attained_flops / 1e9 for r in sel],
                   s=[15 + 600 * r.time_s / total for r in sel], color=_color(kind, extra), alpha=0.7,
                   edgecolors="none", label=f"{kind} ({100 * sum(r.time_s for r in sel) / total:.0f}% of time)")
    for r in sorted(rows, key=lambda r: r.time_s, reverse=True)[:3 * label_top]:  # candidates, slowest first
        ax.annotate(r.name, (r.intensity, r.attained_flops / 1e9), fontsize=7, xytext=(4, 3),
                    textcoords="offset points", in_layout=False)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(min(min(ys) / 3, peak / 1e3), peak * 3)
    ax.set_xlabel("arithmetic intensity (FLOP / byte; FLOPs = 2 x MACs + element-wise)")
    ax.set_ylabel("attained GFLOP/s")
    ax.set_title(title or f"Waterline: {profile.describe()}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    fig.legend(fontsize=7, loc="outside right upper",  # beside the axes, where no layer name can run into it
               title=f"{hidden} rows without FLOPs or bytes\nnot shown" if hidden else None, title_fontsize=7)
    _fit_annotations(fig, ax)
    _keep_apart(fig, ax, label_top)
    return fig


def roofline_chart(profile: LayerProfile, path: str | os.PathLike | None = None, **kwargs: Any) -> bytes:
    """`roofline_figure(profile, **kwargs)` as a PNG."""
    return _png(roofline_figure(profile, **kwargs), path)


def efficiency_gap_figure(points: Sequence[dict[str, Any]], peak_flops: float, *, title: str = "Efficiency gap",
                          xlabel: str = "FLOPs (2 x MACs + element-wise)",
                          efficiencies: Sequence[float] = EFFICIENCY_LINES) -> Figure:
    """Points (dicts with 'label', 'flops', 'latency_s') on log axes of arithmetic complexity vs measured
    latency, with the lines latency = FLOPs / (comp. eff. x peak) for each computational efficiency (achieved /
    peak FLOP/s; Lavin et al.). A point on the 10% line runs at a tenth of the compute peak; the vertical
    distance to the 100% line is its efficiency gap. Points are told apart by colour and marker in a legend
    below the plot ('label (x% comp. eff.)'), so no name is cut off at the edge or drawn over another."""
    pts = [p for p in points if p["flops"] > 0 and p["latency_s"] > 0]
    if not pts:
        raise ValueError("efficiency_gap_chart needs at least one point with positive flops and latency")
    fig = _figure(7.5, 5.4 + 0.15 * len(pts))
    ax = fig.add_subplot()
    fx = [p["flops"] for p in pts]
    lat = [p["latency_s"] * 1e3 for p in pts]
    xlo, xhi = min(fx) / 3, max(fx) * 3
    ylo, yhi = min(min(lat), xlo / peak_flops * 1e3) / 2, max(lat) * 3
    for e in efficiencies:
        ax.plot([xlo, xhi], [xlo / (e * peak_flops) * 1e3, xhi / (e * peak_flops) * 1e3], color="grey",
                lw=0.8, ls="-" if e == 1 else ":")
        # label where the line leaves the plot: the right edge, or the top edge for steep (inefficient) lines
        x_top = yhi / 1e3 * e * peak_flops
        at = (xhi, xhi / (e * peak_flops) * 1e3) if x_top >= xhi else (x_top, yhi)
        if at[0] > xlo and at[1] > ylo:
            ax.annotate(_fmt_eff(e), at, fontsize=7, color="grey", xytext=(-2, -2), textcoords="offset points",
                        ha="right", va="top")
    for i, p in enumerate(pts):
        eff = p["flops"] / (p["latency_s"] * peak_flops)
        style = dict(_style(i), color=_KIND_COLORS[p["label"]]) if p["label"] in _KIND_COLORS else _style(i)
        ax.scatter([p["flops"]], [p["latency_s"] * 1e3], s=40, zorder=3, **style,
                   label=f"{p['label']} ({100 * eff:.1f}% comp. eff.)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("measured latency (ms)")
    ax.set_title(f"{title}\nlines: latency = FLOPs / (comp. eff. x {peak_flops / 1e9:.0f} GFLOP/s), "
                 "comp. eff. = achieved / peak FLOP/s", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    labels = ax.get_legend_handles_labels()[1]
    fig.legend(fontsize=7, loc="outside lower center", ncol=_legend_columns(labels, 7.5, 3))
    return fig


def efficiency_gap_chart(points: Sequence[dict[str, Any]], peak_flops: float,
                         path: str | os.PathLike | None = None, **kwargs: Any) -> bytes:
    """`efficiency_gap_figure(points, peak_flops, **kwargs)` as a PNG."""
    return _png(efficiency_gap_figure(points, peak_flops, **kwargs), path)


def pareto_front(items: Sequence[dict[str, Any]], x: str, y: str, maximize_y: bool = True) -> list[int]:
    """Indices of the items no other item beats on both: lower `x` and better `y` (higher if maximize_y)."""
    idx = [i for i, it in enumerate(items) if it.get(x) is not None and it.get(y) is not None]
    sign = 1 if maximize_y else -1
    front = []
    for i in idx:
        xi, yi = items[i][x], sign * items[i][y]
        dominated = any(items[j][x] <= xi and sign * items[j][y] >= yi and
                        (items[j][x] < xi or sign * items[j][y] > yi) for j in idx if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: items[i][x])


def pareto_labels(models: Sequence[dict[str, Any]], latency_px: int | str | None) -> tuple[str, str]:
    """(latency label, top-1 label) of the Pareto chart. Where the official top-1 figures (at each card's
    'top1_px') were taken at another resolution than the latency (measured at `latency_px`), both labels say
    at which."""
    sizes = sorted({str(m["top1_px"]) for m in models if m.get("top1") is not None and m.get("top1_px")})
    latency, top1 = "measured latency (ms)", "official ImageNet top-1 (%)"
    if latency_px is None or not sizes or sizes == [str(latency_px)]:
        return latency, top1
    at = f"{sizes[0]} px" if len(sizes) == 1 else f"each card's size, {sizes[0]}-{sizes[-1]} px"
    return f"{latency} at {latency_px} px", f"{top1} at {at}"


def pareto_figure(models: Sequence[dict[str, Any]], *, title: str = "Latency of models",
                  latency_px: int | str | None = None) -> Figure:
    """Models (dicts with 'name', 'params', 'macs', 'latency_s', optional 'top1' and 'top1_px', the resolution
    the top-1 was taken at) as latency (measured at `latency_px`) vs parameters and latency vs MACs, and, when
    official top-1 figures are known, top-1 vs latency with its Pareto front (no other model both faster and
    more accurate). Each model has one colour and marker in every panel, named in a legend below the panels
    (never inline, where names collide); front members are drawn filled."""
    if not models:
        raise ValueError("pareto_chart needs at least one model")
    with_top1 = [m for m in models if m.get("top1") is not None]
    panels = 3 if with_top1 else 2
    front = set(pareto_front(models, "latency_s", "top1")) if with_top1 else set()
    lat_label, top1_label = pareto_labels(models, latency_px)
    fig = _figure(5.0 * panels, 4.6 + 0.2 * len(models))
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    specs = [("params", 1e6, "parameters (M)"), ("macs", 1e9, "MACs (G)")]
    for ax, (key, scale, label) in zip(axes, specs, strict=False):
        for i, m in enumerate(models):
            st = _style(i)
            ax.scatter([m[key] / scale], [m["latency_s"] * 1e3], s=40, zorder=3, marker=st["marker"],
                       facecolors=st["color"] if i in front or not front else "none", edgecolors=st["color"],
                       label=m["name"])
        ax.set_xlabel(label)
        ax.set_ylabel(lat_label)
        ax.grid(True, alpha=0.3)
        _maybe_log(ax, [m[key] / scale for m in models], [m["latency_s"] * 1e3 for m in models])
    if with_top1:
        _top1_panel(axes[2], models, front, lat_label, top1_label)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside lower center",
               ncol=_legend_columns([m["name"] for m in models], 5.0 * panels, 4), title_fontsize=7,
               title="filled: on the top-1 / latency Pareto front" if front else None)
    fig.suptitle(title, fontsize=10)
    return fig


def _top1_panel(ax, models: Sequence[dict[str, Any]], front: set[int], xlabel: str, ylabel: str) -> None:
    """Official top-1 against latency, the Pareto front stepped through its members."""
    for i, m in enumerate(models):
        if m.get("top1") is None:
            continue
        st = _style(i)
        ax.scatter([m["latency_s"] * 1e3], [m["top1"]], s=40, zorder=3, marker=st["marker"],
                   facecolors=st["color"] if i in front else "none", edgecolors=st["color"])
    f = sorted(front, key=lambda i: models[i]["latency_s"])
    ax.step([models[i]["latency_s"] * 1e3 for i in f], [models[i]["top1"] for i in f], where="post",
            color="grey", lw=1, label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, alpha=0.3)


def pareto_chart(models: Sequence[dict[str, Any]], path: str | os.PathLike | None = None, **kwargs: Any) -> bytes:
    """`pareto_figure(models, **kwargs)` as a PNG."""
    return _png(pareto_figure(models, **kwargs), path)


def _maybe_log(ax, xs: Sequence[float], ys: Sequence[float]) -> None:
    """Log axes when the values span more than a factor of 10."""
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    if min(ys) > 0 and max(ys) / min(ys) > 10:
        ax.set_yscale("log")


def layer_gap_points(profile: LayerProfile, by: str = "kind") -> list[dict[str, Any]]:
    """Efficiency-gap points for a profile's layer groups ('kind' or 'type'), skipping groups without FLOPs."""
    return [dict(label=g.key, flops=g.flops, latency_s=g.time_s) for g in profile.group(by)
            if g.flops > 0 and g.time_s > 0]


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if not is_png(data):
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


__all__ = ["EFFICIENCY_LINES", "efficiency_gap_chart", "efficiency_gap_figure", "is_png", "layer_gap_points",
           "pareto_chart", "pareto_figure", "pareto_front", "pareto_labels", "png_size", "roofline_chart",
           "roofline_figure"]
