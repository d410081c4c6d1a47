"""Do ConvNeXt's depthwise convolutions run at lower efficiency than its pointwise convolutions on this machine?

InceptionNeXt (Yu et al., 2023) and "On the Efficiency of Convolutional Neural Networks" (Lavin et al., 2024)
both say the 7x7 depthwise convolutions of ConvNeXt cost few FLOPs but much time. This script measures it with
convscope's per-layer waterline analysis: every layer's time (median over profiled passes) joined with its exact
FLOPs and bytes, and its efficiency = waterline bound / measured time, where the bound is
max(FLOPs / compute peak, bytes / DRAM bandwidth) per kernel with both peaks measured here.

Timings on a shared machine are noisy, so the profile is repeated `--rounds` times; each round gives the
depthwise and pointwise efficiencies of the same forward passes, and the report takes the median of each
round's ratio. With one thread, layers are timed twice per round: by the calling thread's CPU time (the
headline: it leaves out the time other processes hold the core) and by the wall clock (torch.profiler scopes),
which on a busy machine charges long layers for preemption more than short ones.

    PYTHONPATH=src python benchmarks/waterline_convnext.py [--model convnext_tiny] [--batch 1 8] [--size 224]
        [--threads 1] [--repeats 7] [--rounds 3] [--out benchmarks/results/waterline_convnext]

Writes OUT.md (tables), OUT.json (every number, the machine and the ceilings) and OUT.png (the roofline chart of
the first batch size).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

if TYPE_CHECKING:
    from convscope.analysis.waterline import LayerProfile

KINDS = ("depthwise conv", "pointwise conv")


def kind_stats(prof: LayerProfile, stage: str | None = None) -> dict[str, dict[str, float]]:
    """Time, FLOPs, bytes, bound and efficiency of the depthwise and pointwise convs (optionally one stage)."""
    out = {}
    total_t = sum(r.time_s for r in prof.layers)
    total_f = prof.totals["flops"]
    for kind in KINDS:
        rows = [r for r in prof.layers if r.kind == kind and (stage is None or r.name.startswith(stage + "."))]
        t = sum(r.time_s for r in rows)
        f = sum(r.flops for r in rows)
        b = sum(r.bytes for r in rows)
        bound = sum(r.bound_s for r in rows)
        out[kind] = dict(layers=len(rows), time_s=t, flops=f, bytes=b, bound_s=bound, efficiency=bound / t,
                         attained_gflops=f / t / 1e9, intensity=f / b, time_share=t / total_t,
                         flop_share=f / total_f, memory_bound=sum(r.limiter == "memory" for r in rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="convnext_tiny")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7, help="profiled passes per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/waterline_convnext"))
    args = ap.parse_args()
    import torch

    import convscope
    from convscope.analysis import plots
    from convscope.analysis.hardware import hardware_peaks
    from convscope.analysis.waterline import profile_layers

    out = Path(args.out)
    command = "PYTHONPATH=src python " + shlex.join(["benchmarks/waterline_convnext.py", *sys.argv[1:]])

    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = convscope.create_model(args.model)
    peaks = hardware_peaks("cpu", threads=args.threads, dtypes=("fp32",), refresh=True)
    print(peaks.summary())

    clocks = ("thread", "wall") if args.threads == 1 else ("wall",)
    results = []
    chart_profile = None
    for batch in args.batch:
        by_clock = {}
        for clock in clocks:
            by_clock[clock] = dict(rounds=[])
        for i in range(args.rounds):
            for clock in clocks:  # interleaved, so both clocks see the same machine load
                prof = profile_layers(model, (batch, 3, args.size, args.size), threads=args.threads,
                                      repeats=args.repeats, peaks=peaks, clock=clock)
                stats = kind_stats(prof)
                ratio = stats["pointwise conv"]["efficiency"] / stats["depthwise conv"]["efficiency"]
                stages = sorted({".".join(r.name.split(".")[:2]) for r in prof.layers
                                 if r.name.startswith("stages.")})
                by_clock[clock]["rounds"].append(dict(totals=prof.totals, kinds=stats, ratio=ratio,
                                                      stages={s: kind_stats(prof, s) for s in stages},
                                                      by_kind=[g.to_dict() for g in prof.by_kind]))
                by_clock[clock]["layers"] = [r.to_dict() for r in prof.layers]
                print(f"batch {batch} round {i + 1} {clock:>6} clock: forward {prof.totals['model_s'] * 1e3:.1f} ms; "
                      f"depthwise {100 * stats['depthwise conv']['efficiency']:.1f}%, pointwise "
                      f"{100 * stats['pointwise conv']['efficiency']:.1f}% efficient (ratio {ratio:.2f}x)")
                if chart_profile is None:
                    chart_profile = prof
        for c in by_clock.values():
            c["median_ratio"] = statistics.median(r["ratio"] for r in c["rounds"])
        results.append(dict(batch=batch, clocks=by_clock))

    plots.roofline_chart(chart_profile, out.with_suffix(".png"), title=f"Per layer: {chart_profile.describe()}")
    record = dict(command=command, model=args.model, size=args.size, threads=args.threads, repeats=args.repeats,
                  rounds=args.rounds, load_average=[load_before, os.getloadavg()[0]], cpus=os.cpu_count(),
                  machine=chart_profile.machine, peaks=peaks.to_dict(), results=results)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    out.with_suffix(".md").write_text(markdown(record, out.with_suffix(".png").name))
    print(f"wrote {out.with_suffix('.md')}, .json, .png")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


_CLOCK_TITLE = {"thread": "calling thread's CPU time (headline)",
                "wall": "wall clock, torch.profiler scopes (charges layers for time other processes held the core)"}


def _clock_section(clock: str, rounds: list[dict], median_ratio: float) -> list[str]:
    def med(kind: str, key: str, stage: str | None = None) -> float:
        src = (lambda r: r["kinds"]) if stage is None else (lambda r: r["stages"][stage])
        return statistics.median(src(r)[kind][key] for r in rounds)

    t = {k: statistics.median(r["totals"][k] for r in rounds) for k in rounds[0]["totals"]}
    lines = [f"### Timed by the {_CLOCK_TITLE[clock]}", "",
             f"Forward {t['model_s'] * 1e3:.1f} ms (median, no hooks); leaf layers {t['leaf_s'] * 1e3:.1f} ms "
             f"+ container glue {t['glue_s'] * 1e3:.1f} ms; unattributed {t['unattributed_s'] * 1e3:+.1f} ms. "
             f"Whole model: {t['flops'] / 1e9:.2f} GFLOPs, {t['bytes'] / 1e6:.0f} MB moved, waterline bound "
             f"{t['bound_s'] * 1e3:.1f} ms, efficiency {_pct(t['efficiency'])}.", "",
             "| layers | n | share of FLOPs | share of time | attained GFLOP/s | FLOP/byte | memory-bound layers "
             "| efficiency |", "|---|---|---|---|---|---|---|---|"]
    for k in KINDS:
        n = rounds[0]["kinds"][k]["layers"]
        lines.append(f"| {k} | {n} | {_pct(med(k, 'flop_share'))} | {_pct(med(k, 'time_share'))} | "
                     f"{med(k, 'attained_gflops'):.1f} | {med(k, 'intensity'):.1f} | "
                     f"{rounds[0]['kinds'][k]['memory_bound']} | **{_pct(med(k, 'efficiency'))}** |")
    ratios = ", ".join(f"{r['ratio']:.2f}" for r in rounds)
    lines += ["", f"Pointwise / depthwise efficiency: **{median_ratio:.2f}x** (median; rounds: {ratios}).", "",
              "| stage | depthwise eff. | depthwise GFLOP/s | pointwise eff. | pointwise GFLOP/s |",
              "|---|---|---|---|---|"]
    for s in rounds[0]["stages"]:
        if rounds[0]["stages"][s]["depthwise conv"]["layers"] == 0:
            continue
        lines.append(f"| {s} | {_pct(med('depthwise conv', 'efficiency', s))} | "
                     f"{med('depthwise conv', 'attained_gflops', s):.1f} | "
                     f"{_pct(med('pointwise conv', 'efficiency', s))} | "
                     f"{med('pointwise conv', 'attained_gflops', s):.1f} |")
    return lines + [""]


def _summary(rec: dict) -> list[str]:
    """The answer, from the headline clock, and what limits the reading."""
    clock = "thread" if rec["threads"] == 1 else "wall"
    lines = ["## Result", ""]
    for res in rec["results"]:
        rounds = res["clocks"][clock]["rounds"]
        lower = sum(r["ratio"] > 1 for r in rounds)
        k = {kind: {key: statistics.median(r["kinds"][kind][key] for r in rounds)
                    for key in ("efficiency", "flop_share", "time_share")} for kind in KINDS}
        dw, pw = k["depthwise conv"], k["pointwise conv"]
        lines.append(
            f"- Batch {res['batch']}: the depthwise convolutions run at {_pct(dw['efficiency'])} efficiency, the "
            f"pointwise ones at {_pct(pw['efficiency'])} ({res['clocks'][clock]['median_ratio']:.2f}x; depthwise "
            f"lower in {lower} of {len(rounds)} rounds). Depthwise: {_pct(dw['flop_share'])} of the FLOPs, "
            f"{_pct(dw['time_share'])} of the time; pointwise: {_pct(pw['flop_share'])} of the FLOPs, "
            f"{_pct(pw['time_share'])} of the time.")
    p = rec["peaks"]
    probes = p["details"]["fp32"]
    if "conv3x3" in probes:
        mm, conv = probes["matmul"]["gflops"], probes["conv3x3"]["gflops"]
        lines += ["", f"The pointwise layers of {rec['model']} are `nn.Linear` on channels-last tokens. torch runs "
                  f"them with the BLAS behind `torch.mm`, whose probe reached {mm:.0f} GFLOP/s here, while oneDNN's "
                  f"dense 3x3 convolution reached {conv:.0f} GFLOP/s (the ceiling used). Against that ceiling the "
                  f"pointwise layers cannot exceed {_pct(mm / conv)} efficiency on this machine."]
    lo, hi = rec["load_average"]
    clocks = ("The wall clock charges a layer for the time other processes held the core, which inflates long layers "
              "(the pointwise matrix products take milliseconds) more than short ones (the depthwise convolutions); "
              "the thread clock does not (other jobs still reach it through the shared last-level cache), so it is "
              "the headline. Both tables are below.")
    busy = hi > rec["threads"] + 0.5   # this run itself keeps `threads` CPUs busy
    lines += ["", f"Load average {lo:.1f} at the start and {hi:.1f} at the end, on {rec['cpus']} CPUs, this run "
              "included: " + ("other jobs shared the machine. " if busy else "no other heavy work ran. ") + clocks, ""]
    return lines


def markdown(rec: dict, png: str) -> str:
    from convscope.analysis.hardware import describe_machine

    m, p = rec["machine"], rec["peaks"]
    d = p["details"]["fp32"]
    lines = [
        f"# Waterline analysis of {rec['model']}: depthwise vs pointwise convolutions", "",
        f"Command: `{rec['command']}`  ",
        f"Machine: {describe_machine(m)}; {m['os']}.  ",
        f"Ceilings measured in the same run (`convscope hw --threads {rec['threads']}`): fp32 compute "
        f"{p['compute_gflops']['fp32']:.1f} GFLOP/s (best of torch.mm {d['matmul']['gflops']:.1f}, dense 3x3 conv "
        + (f"{d['conv3x3']['gflops']:.1f}" if "conv3x3" in d else "-")
        + f"), DRAM copy bandwidth {p['bandwidth_gbs']:.1f} GB/s (read + write), last-level cache copy "
        f"{p['cache_bandwidth_gbs'] or 0:.1f} GB/s; ridge point {p['compute_gflops']['fp32'] / p['bandwidth_gbs']:.1f} "
        "FLOP/byte.  ",
        f"Input {rec['size']}x{rec['size']}, fp32, eager, {rec['threads']} thread(s); each layer's time is the median "
        f"of {rec['repeats']} forward passes; every figure below is the median over {rec['rounds']} rounds.",
        "",
        "Efficiency = waterline bound / measured time, the bound being the sum over the layer's kernels of "
        "max(FLOPs / compute peak, bytes / DRAM bandwidth); FLOPs = 2 x MACs + element-wise. The ratio is "
        "pointwise efficiency / depthwise efficiency, computed within each round.", ""]
    lines += _summary(rec)
    for res in rec["results"]:
        lines += [f"## Batch {res['batch']}", ""]
        for clock, c in res["clocks"].items():
            lines += _clock_section(clock, c["rounds"], c["median_ratio"])
    lines += [f"![roofline]({png})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
