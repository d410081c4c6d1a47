"""Deploy speed: timm eager fp32, convscope eager fp32, and convscope after each deploy step, as ratios to timm eager
measured in the same run, with the machine's ISA; and the per-layer waterline of the fastest float form.

The final run (a quiet machine; ~40 min per model on a busy 2-core one, torch.compile and int8 builds included):

    python benchmarks/deploy_speed.py --models convnext_tiny,inception_next_tiny,caformer_s18,unireplknet_t,\\
        maxvit_tiny_tf_224 --batches 1,8 --threads 1 --repeats 11 --bf16-freeze --int8-mixed-bf16 --waterline \\
        --clock thread --out benchmarks/results/deploy_speed

Forms: timm eager fp32 (and timm bf16 autocast + channels_last) where timm has the model, else the ratios are to
convscope eager fp32 (UniRepLKNet: timm has none), said on the page; convscope eager fp32; prepare
(re-parameterise + fold BatchNorm); + channels_last; + bf16 autocast; + torch.compile (fp32 over prepare +
channels_last); int8 (PT2E x86 Inductor, calibrated on random batches, compiled, over prepare + channels_last);
with --bf16-freeze also bf16 autocast under torch.compile with Inductor freezing (over prepare + channels_last); with
--int8-mixed-bf16 also the int8 form compiled and run under bf16 autocast (torchao's int8-mixed-bf16 recipe: the
quantised convolutions and linears stay int8, the float ops between them, LayerNorm, GELU, softmax, run in bf16);
with --int8-autotune also the int8 form compiled with Inductor's max-autotune (it benchmarks kernel choices,
including its C++ GEMM templates, while compiling).

All forms of one model and batch are built first, then timed alternately: every repeat times one call of each
form in turn (the order reversed every other repeat), so a change in the machine's load hits all forms alike;
each figure is the median over repeats, each ratio the median of the per-repeat ratios. Each form's "% of roof" is
its roof (convscope.analysis.waterline.form_roof: a lower bound on its latency, each layer priced at the peak of
the dtype it runs in under this machine's `convscope hw` ceilings at --threads) over its median latency; a timm
row's roof is that of the convscope model as trained (the same network). The load average is
recorded before and after every model. --waterline profiles the fastest float form of each model per layer
(convscope.analysis.waterline: measured time against max(FLOPs / peak, bytes / bandwidth) under this machine's
measured ceilings) and lists the layers with the largest time share that run far below their bound
(efficiency under --far-below). torch.compile cannot be profiled per layer: when it is the fastest, the
profile is of the same settings in eager mode, said on the page.

Cheap check of every step (tests/test_benchmarks.py): --models convnext_atto --size 32 --batches 1 --skip
compile,int8 --repeats 2. --resume keeps the models an interrupted run with the same --out already measured.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOAT_FORMS = ("convscope eager fp32", "prepare", "+channels_last", "+bf16 autocast", "+torch.compile")
# form -> (priced as the prepared model?, the dtype its layers run in), for its roof
ROOF_OF = {"timm eager fp32": (False, "fp32"), "timm bf16 + channels_last": (False, "bf16"),
           "convscope eager fp32": (False, "fp32"), "prepare": (True, "fp32"), "+channels_last": (True, "fp32"),
           "+bf16 autocast": (True, "bf16"), "+torch.compile": (True, "fp32"), "int8 (compiled)": (True, "int8"),
           "bf16 + compile(freeze)": (True, "bf16"), "int8 mixed bf16 (compiled)": (True, "int8"),
           "int8 max-autotune (compiled)": (True, "int8")}
ROOF_DTYPES = ("fp32", "bf16", "int8")
SKIPPABLE = ("bf16", "compile", "int8")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="convnext_tiny,inception_next_tiny,caformer_s18,unireplknet_t,"
                                       "maxvit_tiny_tf_224")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15, help="alternating repeats per model and batch")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="time cap per form for one model and batch (stops the repeats early, never below 3)")
    p.add_argument("--skip", default="", help=f"comma-separated forms to skip: {','.join(SKIPPABLE)}")
    p.add_argument("--bf16-freeze", action="store_true",
                   help="also time bf16 autocast under torch.compile with Inductor freezing (prepare + channels_last)")
    p.add_argument("--int8-mixed-bf16", action="store_true",
                   help="also time the int8 form compiled and run under bf16 autocast (int8-mixed-bf16)")
    p.add_argument("--int8-autotune", action="store_true",
                   help="also time the int8 form compiled with Inductor's max-autotune")
    p.add_argument("--waterline", action="store_true", help="profile the layers of each model's fastest float form")
    p.add_argument("--far-below", type=float, default=0.25,
                   help="a layer runs far below its bound under this efficiency (bound / time); default 0.25")
    p.add_argument("--top", type=int, default=8, help="layers listed per model in the waterline section")
    p.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="timer of every form and of the waterline profile ('thread': the calling thread's CPU time, "
                        "with --threads 1 the work itself without the time other processes held the core, for a "
                        "busy machine)")
    p.add_argument("--resume", action="store_true", help="keep the models OUT.json already holds from this command")
    p.add_argument("--reprice", action="store_true",
                   help="time nothing: price OUT.json's forms (written by this command) under the ceilings "
                        "`convscope hw` holds now and profile the waterline again (for ceilings that were measured "
                        "under load, once `convscope hw --refresh` has run on an idle machine)")
    p.add_argument("--out", default="benchmarks/results/deploy_speed", help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(SKIPPABLE):
        p.error(f"--skip takes some of {','.join(SKIPPABLE)}; got {args.skip!r}")
    args.skip = skip
    try:
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches expects comma-separated integers; got {args.batches!r}")
    if min(args.batches) < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--batches, --repeats and --threads must be >= 1")
    args.models = [m for m in args.models.split(",") if m]
    return args


def build_forms(name, b, args, timm, model):
    """{label: x -> output} for every form of `model` at batch `b`, and {label: error or build seconds}."""
    import copy

    import torch

    from convscope.deploy.optimize import Form, build_form
    runs, info = {}, {}
    try:
        tm = timm.create_model(name, pretrained=False).eval()
    except Exception as e:  # noqa: BLE001 - timm's unknown-model error
        tm = None
        info["timm eager fp32"] = dict(error=f"timm has no {name} ({type(e).__name__})")
    if tm is not None:
        def run_timm(x, tm=tm):
            with torch.inference_mode():
                return tm(x)
        runs["timm eager fp32"] = run_timm
        info["timm eager fp32"] = {}
        if "bf16" not in args.skip:
            tcl = copy.deepcopy(tm).to(memory_format=torch.channels_last)

            def run_timm_bf16(x, tcl=tcl):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return tcl(x.contiguous(memory_format=torch.channels_last))
            runs["timm bf16 + channels_last"] = run_timm_bf16
            info["timm bf16 + channels_last"] = {}
    forms = [("convscope eager fp32", Form()), ("prepare", Form(prepare=True)),
             ("+channels_last", Form(prepare=True, channels_last=True))]
    if "bf16" not in args.skip:
        forms.append(("+bf16 autocast", Form(prepare=True, channels_last=True, dtype="bf16")))
    if "compile" not in args.skip:
        forms.append(("+torch.compile", Form(prepare=True, channels_last=True, compile=True)))
    if "int8" not in args.skip:
        forms.append(("int8 (compiled)", Form(prepare=True, channels_last=True, dtype="int8", compile=True)))
    if args.bf16_freeze:
        forms.append(("bf16 + compile(freeze)", Form(prepare=True, channels_last=True, dtype="bf16", compile=True,
                                                     freeze=True)))
    if args.int8_mixed_bf16:
        forms.append(("int8 mixed bf16 (compiled)", Form(prepare=True, channels_last=True, dtype="int8",
                                                         compile=True)))
    if args.int8_autotune:
        forms.append(("int8 max-autotune (compiled)", Form(prepare=True, channels_last=True, dtype="int8",
                                                           compile=True)))
    x = torch.randn(b, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    for label, form in forms:
        t0 = time.perf_counter()
        try:
            with _autotuned(label.startswith("int8 max-autotune")):
                run, _ = build_form(model, form, x)
            if label.startswith("int8 mixed bf16"):
                run = _under_bf16_autocast(run)
            run(x)   # compiles, where it does
            runs[label] = run
            info[label] = dict(build_s=time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - a form that fails to build is reported, not fatal
            info[label] = dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120]}")
        print(f"  {name} b{b} built {label}: {info[label]}", flush=True)
    return runs, info, x


@contextlib.contextmanager
def _autotuned(on: bool):
    """While on, the deploy path's int8 compile (quantize.compile_int8, looked up when the form is built) adds
    Inductor's max_autotune to the settings it switches on around each call of the runner it returns."""
    import functools

    import convscope.deploy.quantize as quantize
    if not on:
        yield
        return
    plain = quantize.compile_int8
    quantize.compile_int8 = functools.partial(plain, max_autotune=True)
    try:
        yield
    finally:
        quantize.compile_int8 = plain


def _under_bf16_autocast(run):
    """`run` called under bf16 autocast (its first call, which compiles, too: the graph is traced under it)."""
    import torch

    def mixed(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run(x).float()
    return mixed


def alternate(runs, x, repeats, max_s, clock="wall"):
    """Time every form once per repeat, in turn (order reversed every other repeat); per-form times, by the wall
    clock or (clock='thread', one torch thread) the calling thread's CPU time."""
    import torch

    from convscope.analysis.timing import check_clock
    check_clock(clock, torch.device("cpu"))
    timer = time.perf_counter if clock == "wall" else time.thread_time
    names = list(runs)
    times = {n: [] for n in names}
    for fn in runs.values():
        fn(x)
    start = time.perf_counter()
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = timer()
            runs[n](x)
            times[n].append(timer() - t0)
        if r + 1 >= 3 and time.perf_counter() - start > max_s * len(names):
            break
    return times


def roofs(model, b, args, peaks) -> dict[str, float]:
    """{form label: its roof in ms} at batch `b` (form_roof of the model as trained or prepared, in the form's
    dtype); a form whose dtype has no measured peak here is left out."""
    import copy

    from convscope.analysis.counting import count
    from convscope.analysis.waterline import form_roof
    from convscope.deploy import prepare_for_inference
    size = (b, 3, args.size, args.size)
    counts = {False: count(model, size), True: count(prepare_for_inference(copy.deepcopy(model)), size)}
    return {label: 1e3 * form_roof(counts[prepared], dtype, peaks) for label, (prepared, dtype) in ROOF_OF.items()
            if dtype in peaks.compute_gflops}


def bench_model(name, args, timm, peaks):
    import torch
    from common import load_average

    from convscope import create_model
    torch.manual_seed(0)
    model = create_model(name).eval()
    rows = {}
    for b in args.batches:
        runs, info, x = build_forms(name, b, args, timm, model)
        roof = roofs(model, b, args, peaks)
        load_before = load_average()
        times = alternate(runs, x, args.repeats, args.max_seconds, args.clock)
        ref = "timm eager fp32" if "timm eager fp32" in times else "convscope eager fp32"
        r = {}
        for label in info:
            v = dict(info.get(label, {}))
            if label in times:
                t = times[label]
                v.update(ms=1e3 * statistics.median(t), repeats=len(t),
                         ratio=statistics.median(a / c for a, c in zip(times[ref], t, strict=False)))
                if label in roof:
                    v.update(roof_ms=roof[label], roof_pct=100 * roof[label] / v["ms"])
            r[label] = v
            print(f"  {name} b{b} {label}: {v}", flush=True)
        rows[str(b)] = dict(forms=r, ref=ref, load_before=load_before, load_after=load_average())
        del runs
    return rows


def fastest_float(per_batch) -> tuple[str, dict]:
    """The fastest convscope float form at the largest batch (label, its settings for the eager profile)."""
    forms = per_batch[max(per_batch, key=int)]["forms"]
    timed = {k: v["ms"] for k, v in forms.items() if k in FLOAT_FORMS and "ms" in v}
    label = min(timed, key=timed.get)
    settings = dict(prepare=label != "convscope eager fp32", channels_last=label in ("+channels_last",
                    "+bf16 autocast", "+torch.compile"), dtype="bf16" if label == "+bf16 autocast" else "fp32")
    return label, settings


def waterline(name, per_batch, args) -> dict:
    from convscope import create_model
    from convscope.analysis.waterline import profile_layers
    from convscope.deploy import prepare_for_inference
    label, s = fastest_float(per_batch)
    b = max(args.batches)
    model = create_model(name).eval()
    if s["prepare"]:
        model = prepare_for_inference(model)
    prof = profile_layers(model, (b, 3, args.size, args.size), dtype=s["dtype"], channels_last=s["channels_last"],
                          threads=args.threads, repeats=5, clock=args.clock)
    leaves = [r for r in prof.layers if r.leaf and r.bound_s > 0]   # identities and reshapes have no bound
    total = sum(r.time_s for r in prof.layers if r.leaf)
    far = sorted((r for r in leaves if r.efficiency < args.far_below), key=lambda r: r.time_s, reverse=True)
    rows = [dict(name=r.name, kind=r.kind, type=r.type, ms=1e3 * r.time_s, share=r.time_s / total,
                 efficiency=r.efficiency, limiter=r.limiter, bound_ms=1e3 * r.bound_s,
                 gflops=r.attained_flops / 1e9) for r in far[:args.top]]
    return dict(form=label, batch=b, settings=s, eager_of_compiled=label == "+torch.compile",
                describe=prof.describe(), summary=prof.summary(), kinds=prof.group_table("kind"),
                far_below=rows, far_share=sum(r.time_s for r in far) / total, far_count=len(far),
                leaves=len(leaves), efficiency=prof.totals["efficiency"])


def form_row(label, v, batch) -> str:
    """One form's row of a model's table: latency, throughput, ratio, % of roof, repeats, build time (or its
    error)."""
    if "ms" not in v:
        return f"| {label} | - | - | {v['error']} | - | - | - |"
    roof = f"{v['roof_pct']:.1f}%" if "roof_pct" in v else "-"
    build = f"{v['build_s']:.0f}" if "build_s" in v else "-"
    return (f"| {label} | {v['ms']:.1f} | {batch * 1e3 / v['ms']:.1f} | {v['ratio']:.2f}x | {roof} | "
            f"{v['repeats']} | {build} |")


def describe_peaks(p) -> str:
    """The ceilings the roofs are priced under, in one sentence."""
    compute = ", ".join(f"{k} {v:.1f} {'GOP/s' if k == 'int8' else 'GFLOP/s'}" for k, v in p["compute_gflops"].items())
    return (f"Roofs priced under this machine's ceilings at {p['threads']} thread(s) (`convscope hw`, measured "
            f"{p['measured_at']}): {compute}, DRAM {p['bandwidth_gbs']:.1f} GB/s"
            + "".join(f"; warning: {w}" for w in p["implausible"]) + ".\n")


def render(data) -> str:
    lines = ["# Deploy speed\n", f"Command: `{data['command']}`\n",
             f"Machine: {data['machine']}; ISA: **{data['isa']}**; torch {data['torch']}, timm {data['timm']}; "
             f"{data['threads']} thread(s); input {data['size']}x{data['size']}; load average (1/5/15 min) "
             f"{data['load_before']} before the run, {data.get('load_after', '-')} after (a shared 2-core machine: "
             "other processes may run beside it).\n",
             f"Each cell: median latency ({data.get('clock', 'wall')} clock"
             + ("; the thread's CPU time: with one torch thread, the work itself, without the time other processes "
                "held the core" if data.get("clock") == "thread" else "")
             + ") over repeats in which every form was timed once in turn (alternately), and "
             "the median per-repeat ratio to the reference form (timm eager fp32; > 1 is faster). timm has no "
             "UniRepLKNet: its ratios are to convscope eager fp32, as the heading says. `prepare` = "
             "re-parameterise + fold BatchNorm (exact); `+channels_last` and `+bf16 autocast` add to the row "
             "above; `+torch.compile` is fp32 over prepare + channels_last; int8 = PT2E (torchao, x86 Inductor "
             "quantizer) over prepare + channels_last, compiled. Build and compile times are not in the "
             "latencies. % of roof = the form's roof (a lower bound on its latency: the sum over layers of "
             "max(compute time, memory time), each layer at the peak and byte width of the dtype it runs in; "
             "convscope.analysis.waterline.form_roof) / its median latency.\n"]
    if data.get("peaks"):
        lines.append(describe_peaks(data["peaks"]))
    for name, per_batch in data["models"].items():
        for b, rb in per_batch.items():
            ref = rb["ref"]
            lines.append(f"\n## {name}, batch {b} (ratios to {ref})\n")
            lines.append(f"Load average {rb['load_before']} before, {rb['load_after']} after.\n")
            lines.append(f"| form | median ms | items/s | vs {ref} | % of roof | repeats | build s |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|")
            lines += [form_row(label, v, int(b)) for label, v in rb["forms"].items()]
    wl = data.get("waterline") or {}
    if wl:
        lines.append("\n## Per-layer waterline of the optimised float form\n")
        lines.append(f"Each model's fastest float form at the largest batch, profiled layer by layer "
                     f"(convscope.analysis.waterline, {data.get('clock', 'wall')} clock): efficiency = waterline "
                     f"bound max(FLOPs / peak, bytes / bandwidth) / measured time under this machine's measured "
                     f"ceilings. Listed: the layers with the largest time share among those under "
                     f"{100 * data['far_below']:.0f}% efficiency (far below their bound).\n")
        for name, w in wl.items():
            note = " (torch.compile was fastest; profiled: the same settings in eager mode)" \
                if w["eager_of_compiled"] else ""
            lines.append(f"\n### {name}: {w['form']}{note}\n")
            lines.append(f"{w['far_count']} of {w['leaves']} layers with work run under "
                         f"{100 * data['far_below']:.0f}% of "
                         f"their bound and take {100 * w['far_share']:.0f}% of the layer time; whole-model "
                         f"efficiency {100 * w['efficiency']:.1f}%.\n")
            lines.append("| layer | kind | ms | time share | efficiency | limited by | GFLOP/s |")
            lines.append("|---|---|---:|---:|---:|---|---:|")
            for r in w["far_below"]:
                lines.append(f"| {r['name']} | {r['kind']} | {r['ms']:.3f} | {100 * r['share']:.1f}% | "
                             f"{100 * r['efficiency']:.1f}% | {r['limiter']} | {r['gflops']:.1f} |")
            lines.append(f"\n```\n{w['summary']}\n\n{w['kinds']}\n```\n")
    if data.get("notes"):
        lines.append("\n## Notes\n\n" + "\n".join(f"- {n}" for n in data["notes"]) + "\n")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse(argv)
    sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
    import torch
    from common import cpu_name, load_average

    from convscope.analysis.hardware import hardware_peaks
    from convscope.deploy.machine import cpu_isa
    from convscope.files import atomic_write_text
    from convscope.utils import threads_set
    from tests.conftest import import_timm
    timm = import_timm()
    out = Path(args.out)
    jpath, mpath = out.with_suffix(".json"), out.with_suffix(".md")
    command = "python " + shlex.join(["benchmarks/deploy_speed.py", *(sys.argv[1:] if argv is None else argv)])
    data = {"models": {}, "waterline": {}}
    if args.resume and jpath.exists():
        earlier = json.loads(jpath.read_text())
        if earlier.get("command") == command:
            data = earlier
        else:
            print(f"--resume: {jpath} was written by another command ({earlier.get('command', 'unknown')}); "
                  "starting afresh", flush=True)
    data.update(machine=cpu_name(), isa=cpu_isa()["summary"], torch=torch.__version__, timm=timm.__version__,
                threads=args.threads, size=args.size, command=command, far_below=args.far_below, clock=args.clock)
    data.setdefault("load_before", load_average())
    out.parent.mkdir(parents=True, exist_ok=True)
    peaks = hardware_peaks("cpu", threads=args.threads, dtypes=ROOF_DTYPES)
    data["peaks"] = dict(threads=args.threads, bandwidth_gbs=peaks.bandwidth_gbs, measured_at=peaks.measured_at,
                         compute_gflops={k: v for k, v in peaks.compute_gflops.items() if k in ROOF_DTYPES},
                         implausible=peaks.implausible())
    if args.reprice:
        return reprice(args, command, jpath, mpath, peaks, data["peaks"])
    with threads_set(args.threads):
        for name in args.models:
            print(name, flush=True)
            if name not in data["models"]:
                data["models"][name] = bench_model(name, args, timm, peaks)
            if args.waterline and name not in data["waterline"]:
                data["waterline"][name] = waterline(name, data["models"][name], args)
            data["load_after"] = load_average()
            atomic_write_text(jpath, json.dumps(data, indent=1))
            atomic_write_text(mpath, render(data))
    print(f"wrote {mpath}")
    return 0


def _refuse(line: str) -> int:
    """One line on stderr and exit status 2, before any work."""
    print(line, file=sys.stderr)
    return 2


def reprice(args, command, jpath, mpath, peaks, described) -> int:
    """--reprice: the roofs and % of roof of every timed form in OUT.json under `peaks`, and the waterline profiled
    again under them; the timings stay as they were measured."""
    from common import load_average

    from convscope import create_model
    from convscope.files import atomic_write_text
    from convscope.utils import threads_set
    if not jpath.exists():
        return _refuse(f"--reprice: no {jpath} to re-price; run the command without --reprice first")
    data = json.loads(jpath.read_text())
    if data.get("command") != command.replace(" --reprice", ""):
        return _refuse(f"--reprice: {jpath} was written by another command ({data.get('command', 'unknown')})")
    with threads_set(args.threads):
        for name, per_batch in data["models"].items():
            model = create_model(name).eval()
            for b, rb in per_batch.items():
                roof = roofs(model, int(b), args, peaks)
                for label, v in rb["forms"].items():
                    if "ms" in v and label in roof:
                        v.update(roof_ms=roof[label], roof_pct=100 * roof[label] / v["ms"])
            if args.waterline:
                data["waterline"][name] = waterline(name, per_batch, args)
            print(f"{name}: re-priced", flush=True)
    data["peaks"] = described
    data.setdefault("notes", []).append(
        f"Roofs re-priced and the waterline profiled again by `{command}` under the ceilings measured "
        f"{described['measured_at']} (load average {load_average()} at the re-pricing); the timings are the "
        "original run's.")
    atomic_write_text(jpath, json.dumps(data, indent=1))
    atomic_write_text(mpath, render(data))
    print(f"wrote {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
