"""The atlas page: one self-contained, interactive HTML file (plotly, plotly.js embedded once, nothing fetched at
view time) drawn from the atlas database.

Charts, for one machine and one batch size: card top-1 against measured latency with the Pareto front of each form;
MACs against latency coloured by waterline efficiency (the hover names the operator kind that takes most of the
time and its efficiency: why a family runs below its waterline); latency per MAC by operator kind across the zoo;
and, when the database holds several machines, each other machine's latency against this one's for the rows both
measured. Hover shows the model, form, batch, size, latency, MACs and top-1; the legend filters forms (one group
per form) and the dropdown filters families.
"""
from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..mixers import pareto_front
from . import db as atlas_db

PLOTLY_HINT = "pip install 'convscope[atlas]'"
DIVS = ("atlas-pareto", "atlas-macs", "atlas-kinds", "atlas-machines")


def require_plotly() -> None:
    """ValueError (one line, naming the extra) unless plotly is installed."""
    from ...extras import available

    if not available("plotly"):
        raise ValueError(f"atlas report needs plotly, which is not installed: {PLOTLY_HINT}")


def setting_label(rows: Sequence[dict[str, Any]]) -> str:
    """'batch 1, 64 px' / 'batch 1, card size (224 px)': the batch and sides the rows were measured at."""
    batches = sorted({r["batch"] for r in rows})
    sides = sorted({f"{r['size']}" if r["size"] == r["width"] else f"{r['size']}x{r['width']}" for r in rows})
    px = ", ".join(sides[:4]) + (", ..." if len(sides) > 4 else "") + " px"
    card = bool(rows) and all(r["card_size"] for r in rows)
    return f"batch {', '.join(map(str, batches))}, " + (f"card size ({px})" if card else px)


def _slowest_kind(r: dict[str, Any]) -> str:
    if not r["groups"]:
        return "-"
    k, g = max(r["groups"].items(), key=lambda kv: kv[1].get("time_s", 0.0))
    total = sum(v.get("time_s", 0.0) for v in r["groups"].values()) or 1.0
    return f"{k} ({100 * g.get('time_s', 0.0) / total:.0f}% of the time, efficiency {g.get('efficiency', 0.0):.2f})"


def _hover(r: dict[str, Any]) -> list[Any]:
    top1 = "-" if r["top1"] is None else f"{r['top1']:.1f}%"
    eff = "-" if r["efficiency"] is None else f"{r['efficiency']:.3f}"
    return [r["model"], r["form"], r["batch"], f"{r['size']}x{r['width']}", f"{r['median_ms']:.3f}",
            f"{(r['macs'] or 0) / 1e6:.1f} M", top1, eff, _slowest_kind(r), r["form_detail"]]


HOVER = ("<b>%{customdata[0]}</b><br>form %{customdata[1]} (%{customdata[9]})<br>batch %{customdata[2]}, "
         "%{customdata[3]} px<br>%{customdata[4]} ms, %{customdata[5]} MACs<br>top-1 %{customdata[6]}<br>"
         "waterline efficiency %{customdata[7]}<br>slowest kind: %{customdata[8]}<extra></extra>")


def _point_traces(rows: Sequence[dict[str, Any]], x: str, y: str, color: bool) -> list[Any]:
    """One marker trace per (form, family): legend groups by form, `meta` names form and family."""
    import plotly.graph_objects as go

    traces = []
    forms = list(dict.fromkeys(r["form"] for r in rows))
    for i, form in enumerate(forms):
        of_form = [r for r in rows if r["form"] == form]
        for family in sorted({r["family"] for r in of_form}):
            sel = [r for r in of_form if r["family"] == family]
            marker = dict(size=9, symbol=i % 20)
            if color:
                marker.update(color=[float("nan") if r["efficiency"] is None else r["efficiency"] for r in sel],
                              coloraxis="coloraxis")  # NaN: no waterline measured (drawn grey)
            traces.append(go.Scatter(
                x=[r[x] for r in sel], y=[r[y] for r in sel], mode="markers", name=family, legendgroup=form,
                legendgrouptitle_text=form, marker=marker, customdata=[_hover(r) for r in sel],
                hovertemplate=HOVER, meta=dict(kind="points", form=form, family=family)))
    return traces


def _family_menu(traces: Sequence[Any]) -> list[dict[str, Any]]:
    """A dropdown that shows one family's points (and every Pareto front) or all of them."""
    families = sorted({t.meta["family"] for t in traces if t.meta.get("kind") == "points"})

    def visible(fam: str | None) -> list[bool]:
        return [t.meta.get("kind") != "points" or fam is None or t.meta["family"] == fam for t in traces]
    buttons = [dict(label="all families", method="restyle", args=[{"visible": visible(None)}])]
    buttons += [dict(label=f, method="restyle", args=[{"visible": visible(f)}]) for f in families]
    return [dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=1.15, yanchor="top")]


def pareto_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """Card top-1 against latency, every form, with each form's Pareto front (rows with a card top-1)."""
    import plotly.graph_objects as go

    rows = [r for r in rows if r["top1"] is not None]
    traces = _point_traces(rows, "median_ms", "top1", color=False)
    for form in dict.fromkeys(r["form"] for r in rows):
        sel = [r for r in rows if r["form"] == form]
        front = [sel[i] for i in pareto_front([(r["median_ms"], r["top1"]) for r in sel])]
        traces.append(go.Scatter(x=[r["median_ms"] for r in front], y=[r["top1"] for r in front], mode="lines",
                                 line=dict(dash="dash"), name=f"Pareto front {form}", legendgroup=form,
                                 hoverinfo="skip", meta=dict(kind="front", form=form)))
    fig = go.Figure(traces)
    fig.update_layout(title="Official top-1 against latency measured here", updatemenus=_family_menu(traces),
                      legend=dict(groupclick="togglegroup"), height=560)
    fig.update_xaxes(type="log", title=f"latency at {setting_label(rows)} (ms, median)")
    fig.update_yaxes(title="top-1 from the card (%)")
    return fig


def macs_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """MACs against latency, coloured by the waterline efficiency (the form's bound / its latency)."""
    import plotly.graph_objects as go

    rows = [r for r in rows if r["macs"]]
    traces = _point_traces(rows, "macs", "median_ms", color=True)
    fig = go.Figure(traces)
    fig.update_layout(title="MACs against latency: the efficiency gap", updatemenus=_family_menu(traces),
                      legend=dict(groupclick="togglegroup"), height=560,
                      coloraxis=dict(colorscale="Viridis", colorbar=dict(title="waterline<br>efficiency", x=1.2)))
    fig.update_xaxes(type="log", title="MACs (counted)")
    fig.update_yaxes(type="log", title=f"latency at {setting_label(rows)} (ms, median)")
    return fig


def kinds_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """Nanoseconds per MAC of each operator kind (fp32 eager profile) across the models, one box per kind."""
    import plotly.graph_objects as go

    per: dict[str, list[tuple[float, str]]] = {}
    seen = set()
    for r in rows:
        if (r["model"], r["batch"], r["size"]) in seen or not r["groups"]:
            continue
        seen.add((r["model"], r["batch"], r["size"]))
        for kind, g in r["groups"].items():
            if g.get("macs", 0) > 0 and g.get("time_s", 0) > 0:
                per.setdefault(kind, []).append((1e9 * g["time_s"] / g["macs"], r["model"]))
    traces = [go.Box(y=[v for v, _ in vals], text=[m for _, m in vals], name=kind, boxpoints="all",
                     hovertemplate="%{text}: %{y:.4f} ns/MAC<extra>" + html.escape(kind) + "</extra>")
              for kind, vals in sorted(per.items())]
    fig = go.Figure(traces)
    fig.update_layout(title="Latency per MAC by operator kind across the zoo (fp32 eager, per-layer profile)",
                      showlegend=False, height=480)
    fig.update_yaxes(type="log", title=f"ns per MAC at {setting_label(rows)}")
    return fig


def machines_figure(rows: Sequence[dict[str, Any]], base: dict[str, Any], others: Sequence[dict[str, Any]]) -> Any:
    """Each other machine's latency against `base`'s, for the rows (model, form, batch, size, threads) both hold."""
    import plotly.graph_objects as go

    key = ("model", "form", "batch", "size", "threads")
    mine = {tuple(r[k] for k in key): r for r in rows if r["machine"] == base["id"] and r["status"] == "ok"}
    traces, top = [], 0.0
    for m in others:
        pairs = [(mine[k], r) for r in rows if r["machine"] == m["id"] and r["status"] == "ok"
                 and (k := tuple(r[k] for k in key)) in mine]
        top = max([top] + [max(a["median_ms"], b["median_ms"]) for a, b in pairs])
        traces.append(go.Scatter(
            x=[a["median_ms"] for a, _ in pairs], y=[b["median_ms"] for _, b in pairs], mode="markers",
            name=_machine_name(m), customdata=[_hover(b) for _, b in pairs], hovertemplate=HOVER,
            meta=dict(kind="machine", machine=m["id"])))
    traces.append(go.Scatter(x=[0, top], y=[0, top], mode="lines", line=dict(dash="dot", color="grey"),
                             name="same latency", hoverinfo="skip", meta=dict(kind="diagonal")))
    fig = go.Figure(traces)
    fig.update_layout(title="Machine against machine: the same rows measured on each", height=520)
    fig.update_xaxes(title=f"latency on {_machine_name(base)} (ms)")
    fig.update_yaxes(title="latency on the other machine (ms)")
    return fig


def _machine_name(m: dict[str, Any]) -> str:
    return f"{m['cpu_model']} ({m['cores']} cores, torch {m['torch_version']}) [{m['id'][:8]}]"


def _pick_machine(machines: Sequence[dict[str, Any]], wanted: str | None) -> dict[str, Any]:
    """The machine whose id starts with `wanted` (default: this machine when the atlas has it, else the first)."""
    if not machines:
        raise ValueError("the atlas holds no machine yet; run `convscope atlas MODELS` first")
    if wanted is None:
        here = atlas_db.this_machine()["id"]
        return next((m for m in machines if m["id"] == here), machines[0])
    found = [m for m in machines if m["id"].startswith(wanted)]
    if len(found) != 1:
        raise ValueError(f"--machine {wanted!r} matches {len(found)} machines; the atlas holds "
                         f"{', '.join(m['id'] for m in machines)}")
    return found[0]


# Writes what the page drew into <body data-...>: plots, the points each form's traces hold in the top-1 chart
# (data-points-fp, -bf, -int, -best: the form's name without digits), the marker paths rendered there, and the
# machines compared; headless checks read them from the DOM.
_COUNT_SCRIPT = """<script>
(function () {
  var plots = document.querySelectorAll('.js-plotly-plot'), b = document.body;
  b.setAttribute('data-plots', plots.length);
  var first = document.getElementById('atlas-pareto');
  if (first) {
    b.setAttribute('data-points-rendered', first.querySelectorAll('.scatterlayer path.point').length);
    first.data.forEach(function (t) {
      if (t.meta && t.meta.kind === 'points') {
        var k = 'data-points-' + t.meta.form.replace(/[0-9]/g, ''), old = +(b.getAttribute(k) || 0);
        b.setAttribute(k, old + t.x.length);
      }
    });
  }
  var m = document.getElementById('atlas-machines');
  b.setAttribute('data-machines', m ? m.data.filter(function (t) { return t.meta.kind === 'machine'; }).length + 1
                                    : 1);
})();
</script>"""


def _header(path: str, machine: dict[str, Any], machines: Sequence[dict[str, Any]], rows: Sequence[dict],
            batch: int) -> str:
    shown = [r for r in rows if r["machine"] == machine["id"] and r["batch"] == batch]
    bad = [r for r in shown if r["status"] != "ok"]
    items = "".join(f"<li>{html.escape(_machine_name(m))}{' (shown)' if m is machine else ''}</li>"
                    for m in machines)
    failed = "".join(f"<li>{html.escape(r['model'])} {html.escape(r['form'])}: {html.escape(r['status'])}, "
                     f"{html.escape(r['reason'])}</li>" for r in bad)
    return (f"<h1>convscope atlas</h1><p>{html.escape(str(path))}: {len(rows)} rows, {len(machines)} machine(s); "
            f"charts at batch {batch} on the machine shown ({len(shown) - len(bad)} rows measured, {len(bad)} "
            f"failed or over the time cap).</p><ul>{items}</ul>" + (f"<p>Not measured:</p><ul>{failed}</ul>"
                                                                     if failed else ""))


def atlas_report(db: str | os.PathLike, *, machine: str | None = None, batch: int | None = None) -> str:
    """The atlas page for `db`: the charts of `machine` (an id prefix; default this machine, else the first) at
    `batch` (default the smallest measured), plotly.js embedded once."""
    require_plotly()
    import plotly.io as pio

    con = atlas_db.open_db(db, create=False)
    try:
        machines, rows = atlas_db.read_machines(con, str(db)), atlas_db.read_rows(con, str(db))
    finally:
        con.close()
    base = _pick_machine(machines, machine)
    mine = [r for r in rows if r["machine"] == base["id"]]
    batches = sorted({r["batch"] for r in mine})
    if batch is None:
        batch = batches[0] if batches else 1
    elif batch not in batches:
        raise ValueError(f"--batch {batch} was not measured on {base['id']}; measured: {batches or 'none'}")
    ok = [r for r in mine if r["status"] == "ok" and r["batch"] == batch]
    figs = [pareto_figure(ok), macs_figure(ok), kinds_figure(ok)]
    others = [m for m in machines if m is not base]
    if others:
        figs.append(machines_figure([r for r in rows if r["batch"] == batch], base, others))
    divs = [pio.to_html(f, include_plotlyjs=i == 0, full_html=False, div_id=DIVS[i], config=dict(responsive=True))
            for i, f in enumerate(figs)]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>convscope atlas</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}</style></head><body>"
            + _header(str(db), base, machines, rows, batch) + "\n".join(divs) + _COUNT_SCRIPT + "</body></html>")


def write_atlas_report(db: str | os.PathLike, out: str | os.PathLike, **kwargs: Any) -> Path:
    """`atlas_report(db, **kwargs)` written atomically to `out`."""
    from ...files import atomic_write_text

    return atomic_write_text(out, atlas_report(db, **kwargs))

