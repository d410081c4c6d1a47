"""Self-contained HTML reports: charts embedded as base64 PNG, tables, the machine, and the command that made it.

A report needs nothing but a browser: no scripts, styles or images are fetched. One small inline script runs
after load and writes, into `<body data-...>` attributes (not shown to the reader), how many charts decoded and
how many table rows exist, so a headless browser can check that the page rendered.

Two efficiencies appear, always by their full names: "comp. eff." (computational efficiency: achieved / peak
FLOP/s, i.e. FLOPs / (latency x peak)) and "waterline eff." (waterline bound / measured time).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..models import model_card
from . import plots
from .ceilings import ceiling_warnings
from .hardware import describe_machine
from .timing import BenchmarkResult
from .waterline import Comparison, LayerProfile

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
code, pre { background: #f6f6f6; padding: 2px 4px; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; max-width: 900px; }
.note { font-size: 0.85em; color: #555; max-width: 900px; }
footer { margin-top: 2em; font-size: 0.8em; color: #777; }
.warning { color: #a40000; font-weight: bold; }
"""

# Runs after every image has loaded (or failed); marks what rendered.
_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var rows = document.querySelectorAll('table tbody tr').length;
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-decoded', ok);
  document.body.setAttribute('data-tables', document.querySelectorAll('table').length);
  document.body.setAttribute('data-table-rows', rows);
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> str:
    cap = f"<caption class='note'>{_e(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def _figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img alt='{_e(alt)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _machine_section(machine: dict[str, Any], peaks: dict[str, Any], dtype: str) -> str:
    warnings = "".join(f"<p class='note warning'>warning: {_e(w)}</p>"
                       for w in ceiling_warnings(peaks, machine.get("logical_cpus")))
    rows = [["machine", describe_machine(machine)], ["device", machine.get("device_name", machine["device"])],
            ["OS", machine.get("os", "")], ["Python", machine.get("python", "")]]
    for name, g in peaks["compute_gflops"].items():
        rows.append([f"compute peak {name}", f"{g:.1f} {'GOP/s' if name == 'int8' else 'GFLOP/s'} (matrix product, "
                                             "measured)"])
    rows.append(["DRAM bandwidth", f"{peaks['bandwidth_gbs']:.1f} GB/s (copy, read + write, measured)"])
    if peaks.get("cache_bandwidth_gbs"):
        llc = peaks.get("llc_bytes") or 0
        rows.append(["cache bandwidth", f"{peaks['cache_bandwidth_gbs']:.1f} GB/s (copy within the "
                                        f"{llc / 2 ** 20:.0f} MiB last-level cache)"])
    ridge = peaks["compute_gflops"][dtype] / peaks["bandwidth_gbs"]
    rows.append([f"ridge point {dtype}", f"{ridge:.1f} FLOP/byte"])
    rows.append(["ceilings measured", peaks.get("measured_at", "")])
    return "<h2>Machine</h2>" + warnings + _table(["", ""], rows)


def _page(title: str, command: str | None, body: Sequence[str]) -> str:
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    cmd = f"<p>Produced by <code>{_e(command)}</code> on {_e(when)}.</p>" if command else \
        f"<p>Produced on {_e(when)}.</p>"
    return "\n".join([
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>", cmd, *body,
        "<footer><p>convscope efficiency lab: ceilings, timings and counts measured on the machine named above.</p>"
        "</footer>", f"<script>{_CHECK_SCRIPT}</script>", "</body></html>"])


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f}"


def profile_report(profile: LayerProfile, *, benchmark: BenchmarkResult | None = None,
                   command: str | None = None, top: int = 40) -> str:
    """HTML for one model's waterline profile: summary, roofline and efficiency-gap charts, layer groups,
    the `top` slowest layers, and (when given) the latency benchmark."""
    t = profile.totals
    summary = _table(["quantity", "value"], [
        ["forward latency (median, no profiler)", f"{_ms(t['model_s'])} ms  (min {_ms(t['model_min_s'])}, "
                                                  f"p90 {_ms(t['model_p90_s'])})"],
        ["leaf layers (sum of per-layer medians)", f"{_ms(t['leaf_s'])} ms"],
        ["container glue (containers' own forward)", f"{_ms(t['glue_s'])} ms"],
        ["unattributed (forward - layers - glue; negative = profiler overhead)", f"{_ms(t['unattributed_s'])} ms"],
        ["gap: forward time no layer accounts for", f"{_ms(t['gap_s'])} ms ({100 * t['gap_s'] / t['model_s']:.1f}%)"],
        ["parameters", f"{t['params'] / 1e6:.3f} M"],
        ["MACs", f"{t['macs'] / 1e9:.4f} G"],
        ["FLOPs (2 x MACs + element-wise)", f"{t['flops'] / 1e9:.4f} G"],
        ["bytes moved (each op reads inputs, writes outputs)", f"{t['bytes'] / 1e6:.1f} MB"],
        ["waterline bound (sum over kernels of max(FLOPs/peak, bytes/bandwidth))", f"{_ms(t['bound_s'])} ms"],
        ["waterline eff. (bound / latency)", f"{100 * t['efficiency']:.1f}%"],
        ["comp. eff. (achieved / peak FLOP/s = FLOPs / (latency x peak))",
         f"{100 * t['computational_efficiency']:.1f}%"],
    ])
    body = [f"<p>{_e(profile.describe())}. Layer times are medians over {profile.repeats} profiled passes "
            "(torch.profiler scopes around every module's forward); the forward latency is timed without "
            "hooks or profiler.</p>", "<h2>Summary</h2>", summary]
    if profile.uncounted:
        body.append(f"<p class='note'>Operators the counter could not price (not counted as zero): "
                    f"{_e(', '.join(f'{k} x{v}' for k, v in sorted(profile.uncounted.items())))}</p>")
    body.append("<h2>Charts</h2>")
    body.append(_figure(plots.roofline_chart(profile), "roofline chart",
                        "Each layer at its arithmetic intensity and attained FLOP/s under this machine's measured "
                        "compute roof and DRAM bandwidth slope (dashed: last-level cache). Area: share of time."))
    gap_points = plots.layer_gap_points(profile)
    if gap_points:
        body.append(_figure(plots.efficiency_gap_chart(gap_points, profile.peak_flops,
                                                       title=f"Efficiency gap by layer kind: {profile.model}"),
                            "efficiency gap chart",
                            "Layer kinds by FLOPs and measured time, with lines of equal comp. eff. (achieved / "
                            "peak FLOP/s: latency = FLOPs / (comp. eff. x peak))."))
    for by, label in (("kind", "layer kind"), ("type", "module type")):
        body.append(f"<h2>By {label}</h2>")
        body.append(_table([label, "layers", "ms", "% time", "GFLOPs", "MB", "FLOP/B", "GFLOP/s", "waterline eff. %"],
                           [[g.key, g.layers, _ms(g.time_s), f"{100 * g.share:.1f}", f"{g.flops / 1e9:.4f}",
                             f"{g.bytes / 1e6:.2f}", f"{g.intensity:.1f}", f"{g.attained_flops / 1e9:.1f}",
                             f"{100 * g.efficiency:.1f}"] for g in profile.group(by)]))
    rows = sorted(profile.layers, key=lambda r: r.time_s, reverse=True)[:top]
    body.append(f"<h2>Slowest {len(rows)} of {len(profile.layers)} modules</h2>")
    body.append(_table(
        ["module", "type", "kind", "ms", "MFLOPs", "MB", "FLOP/B", "GFLOP/s", "bound ms", "limiter",
         "waterline eff. %"],
        [[r.name, r.type, r.kind, _ms(r.time_s), f"{r.flops / 1e6:.2f}", f"{r.bytes / 1e6:.3f}",
          f"{r.intensity:.1f}", f"{r.attained_flops / 1e9:.1f}", _ms(r.bound_s), r.limiter,
          f"{100 * r.efficiency:.1f}" + ("" if r.physical else " *")] for r in rows]))
    body.append("<p class='note'>* memory-bound with traffic under twice the last-level cache: much of it can hit "
                "in cache, so the DRAM bound is not a hard limit there and waterline eff. can exceed 100%.</p>")
    if benchmark is not None:
        body += _benchmark_section(benchmark)
    body.append(_machine_section(profile.machine, profile.peaks, profile.dtype))
    return _page(f"convscope profile: {profile.model}", command, body)


def _benchmark_section(bench: BenchmarkResult) -> list[str]:
    rows = [[p.batch, _ms(p.latency.median_s), _ms(p.latency.p90_s), _ms(p.latency.min_s), _ms(p.latency.max_s),
             p.latency.n, f"{p.throughput:.1f}",
             "-" if p.peak_memory_bytes is None else f"{p.peak_memory_bytes / 2 ** 20:.0f}",
             "-" if p.compile_s is None else f"{p.compile_s:.1f}"] for p in bench.points]
    return [f"<h2>Latency: {_e(bench.describe())}</h2>",
            _table(["batch", "median ms", "p90 ms", "min ms", "max ms", "runs", "items/s", "peak MiB",
                    "compile s (excluded)"], rows),
            f"<p class='note'>Peak memory: {_e(bench.memory_method)}.</p>"]


def compare_report(comparison: Comparison, *, command: str | None = None) -> str:
    """HTML for a comparison of models: the efficiency-gap chart, the latency Pareto chart and the table."""
    rows = sorted(comparison.rows, key=lambda r: r.latency_s)
    points = [dict(label=r.name, flops=r.flops, latency_s=r.latency_s) for r in rows]
    models = [dict(name=r.name, params=r.params, macs=r.macs, latency_s=r.latency_s, top1=r.top1,
                   top1_px=_card_px(r.name) if r.top1 is not None else None) for r in rows]
    peak = comparison.peaks["compute_gflops"][comparison.dtype] * 1e9
    body = [f"<p>{len(rows)} models, {_e(comparison.describe())}. Latency: median inference forward; counts: "
            "exact, per aten operator.</p>", "<h2>Charts</h2>",
            _figure(plots.efficiency_gap_chart(points, peak, title="Efficiency gap of models"),
                    "efficiency gap chart", "Models by FLOPs and measured latency, with lines of equal comp. eff. "
                    "(achieved / peak FLOP/s: latency = FLOPs / (comp. eff. x peak))."),
            _figure(plots.pareto_chart(models, title=f"Latency ({comparison.describe()})",
                                       latency_px=_px(*comparison.input_size[2:])), "pareto chart",
                    "Measured latency against parameters and MACs; with official top-1 figures (taken at each "
                    "card's input size), the Pareto front of accuracy vs latency (filled markers)."),
            "<h2>Models</h2>",
            _table(["model", "params M", "GMACs", "GFLOPs", "MB moved", "activations M", "latency ms", "p90 ms",
                    "images/s", "bound ms", "waterline eff. %", "comp. eff. %", "official top-1"],
                   [[r.name, f"{r.params / 1e6:.2f}", f"{r.macs / 1e9:.3f}", f"{r.flops / 1e9:.3f}",
                     f"{r.bytes / 1e6:.1f}", f"{r.activations / 1e6:.2f}", _ms(r.latency_s),
                     _ms(r.latency.p90_s), f"{comparison.input_size[0] / r.latency_s:.1f}", _ms(r.bound_s),
                     f"{100 * r.efficiency:.1f}", f"{100 * r.computational_efficiency:.1f}",
                     "-" if r.top1 is None else f"{r.top1:.1f}"] for r in rows]),
            "<p class='note'>waterline eff.: waterline bound / latency; comp. eff.: achieved / peak FLOP/s = FLOPs / "
            "(latency x peak); FLOPs = 2 x MACs + element-wise.</p>",
            _machine_section(comparison.machine, comparison.peaks, comparison.dtype)]
    return _page("convscope compare: " + ", ".join(r.name for r in rows), command, body)


def _px(h: int, w: int) -> str:
    """'224' for a square input, '224x192' otherwise."""
    return str(h) if h == w else f"{h}x{w}"


def _card_px(name: str) -> str | None:
    """The input size a registered model's card figures (its official top-1) were taken at; None if unknown."""
    try:
        return _px(*model_card(name).input_size[1:])
    except (KeyError, ValueError):
        return None


def write_report(html_text: str, path: str | os.PathLike) -> Path:
    """Write the report atomically; returns the path."""
    return atomic_write_text(path, html_text)
