"""Deploy speed: timm eager fp32, convscope eager fp32, and convscope after each deploy step, as ratios to timm eager
measured in the same run, with the machine's ISA; and the per-layer waterline of the optimised float form.

    python benchmarks/deploy_speed.py --models convnext_tiny,inception_next_tiny,caformer_s18,unireplknet_t \\
        --batches 1,8 --threads 1 --out benchmarks/results/deploy_speed

Forms (cumulative, as `convscope optimize` tries them): eager fp32; prepare (re-parameterise + fold BatchNorm);
+ channels_last; + bf16 autocast; + torch.compile (fp32); int8 (PT2E x86 Inductor, calibrated on random batches,
compiled). Every figure: median latency of repeated runs (convscope.analysis.timing.measure), one thread by
default. Results are appended model by model to the JSON, so an interrupted run keeps what it measured; the
markdown page is rewritten from the JSON after every model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

FORMS = ("convscope eager fp32", "prepare", "+channels_last", "+bf16 autocast", "+torch.compile", "int8 (compiled)")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="convnext_tiny,inception_next_tiny,caformer_s18,unireplknet_t")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=20.0, help="time cap per measurement (median of runs done)")
    p.add_argument("--skip", default="", help="comma-separated forms to skip: bf16,compile,int8")
    p.add_argument("--waterline", action="store_true", help="profile the layers of the fastest float form")
    p.add_argument("--out", default="benchmarks/results/deploy_speed", help="writes OUT.json and OUT.md")
    return p.parse_args()


def measure_one(run, x, repeats, max_s):
    from convscope.analysis.timing import measure
    run(x)
    return measure(lambda: run(x), warmup=1, repeats=repeats, max_time_s=max_s).median_s


def bench_model(name, batches, args, timm):
    import torch
    from convscope import create_model
    from convscope.deploy.optimize import Form, build_form
    skip = set(args.skip.split(","))
    torch.manual_seed(0)
    model = create_model(name).eval()
    rows = {}
    for b in batches:
        x = torch.randn(b, 3, args.size, args.size)
        r = {}
        tm = None
        try:
            tm = timm.create_model(name, pretrained=False).eval()
        except Exception as e:  # noqa: BLE001
            r["timm eager fp32"] = dict(error=f"timm has no {name}: {type(e).__name__}")
        if tm is not None:
            def run_timm(x):
                with torch.inference_mode():
                    return tm(x)
            r["timm eager fp32"] = dict(ms=1e3 * measure_one(run_timm, x, args.repeats, args.max_seconds))
            if "bf16" not in skip:
                tcl = tm.to(memory_format=torch.channels_last)

                def run_timm_bf16(x):
                    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                        return tcl(x.contiguous(memory_format=torch.channels_last))
                r["timm bf16 + channels_last"] = dict(ms=1e3 * measure_one(run_timm_bf16, x, args.repeats,
                                                                           args.max_seconds))
            del tm
        forms = [("convscope eager fp32", Form()), ("prepare", Form(prepare=True)),
                 ("+channels_last", Form(prepare=True, channels_last=True))]
        if "bf16" not in skip:
            forms.append(("+bf16 autocast", Form(prepare=True, channels_last=True, dtype="bf16")))
        if "compile" not in skip:
            forms.append(("+torch.compile", Form(prepare=True, channels_last=True, compile=True)))
        if "int8" not in skip:
            forms.append(("int8 (compiled)", Form(prepare=True, channels_last=True, dtype="int8", compile=True)))
        for label, form in forms:
            t0 = time.perf_counter()
            try:
                run, _ = build_form(model, form, x)
                ms = 1e3 * measure_one(run, x, args.repeats, args.max_seconds)
                r[label] = dict(ms=ms, build_s=time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001
                r[label] = dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120]}")
            print(f"  {name} b{b} {label}: {r[label]}", flush=True)
        rows[str(b)] = r
    return rows


def render(data) -> str:
    lines = ["# Deploy speed\n", f"Command: `python benchmarks/deploy_speed.py {data['args']}`\n",
             f"Machine: {data['machine']}; ISA: **{data['isa']}**; torch {data['torch']}, timm {data['timm']}; "
             f"{data['threads']} thread(s); input {data['size']}x{data['size']}; load average during the run "
             f"{data['load']} (a shared 2-core machine: other processes ran beside it, so figures are noisy).\n",
             "Each cell: median latency in ms, and the ratio to timm eager fp32 measured in the same run "
             "(> 1 is faster). `prepare` = re-parameterise + fold BatchNorm (exact); `+channels_last` and "
             "`+bf16 autocast` add to the row above; `+torch.compile` is fp32 over prepare + channels_last; int8 = "
             "PT2E (torchao, x86 Inductor quantizer) over prepare + channels_last, compiled.\n"]
    for name, per_batch in data["models"].items():
        for b, r in per_batch.items():
            base = r.get("timm eager fp32", {}).get("ms") or r.get("convscope eager fp32", {}).get("ms")
            ref = "timm eager fp32" if r.get("timm eager fp32", {}).get("ms") else "convscope eager fp32"
            lines.append(f"\n## {name}, batch {b} (ratios to {ref})\n")
            lines.append("| form | median ms | items/s | vs " + ref + " |")
            lines.append("|---|---:|---:|---:|")
            for label, v in r.items():
                if "ms" in v:
                    lines.append(f"| {label} | {v['ms']:.1f} | {int(b) * 1e3 / v['ms']:.1f} | "
                                 f"{base / v['ms']:.2f}x |")
                else:
                    lines.append(f"| {label} | - | - | {v['error']} |")
    if data.get("waterline"):
        lines.append(f"\n## Per-layer waterline of the optimised float form\n\n```\n{data['waterline']}\n```\n")
    if data.get("notes"):
        lines.append("\n## Notes\n\n" + "\n".join(f"- {n}" for n in data["notes"]) + "\n")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from common import cpu_name, load_average
    from convscope.deploy.machine import cpu_isa
    from convscope.files import atomic_write_text
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import import_timm
    timm = import_timm()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    jpath, mpath = out.with_suffix(".json"), out.with_suffix(".md")
    data = json.loads(jpath.read_text()) if jpath.exists() else {"models": {}}
    data.update(machine=cpu_name(), isa=cpu_isa()["summary"], torch=torch.__version__, timm=timm.__version__,
                threads=args.threads, size=args.size, args=" ".join(sys.argv[1:]))
    batches = [int(b) for b in args.batches.split(",")]
    for name in args.models.split(","):
        print(f"{name}", flush=True)
        data["models"][name] = bench_model(name, batches, args, timm)
        data["load"] = load_average()
        atomic_write_text(jpath, json.dumps(data, indent=1))
        atomic_write_text(mpath, render(data))
    if args.waterline:
        from convscope import create_model
        from convscope.analysis.waterline import profile_layers
        from convscope.deploy import prepare_for_inference
        name = args.models.split(",")[0]
        m = prepare_for_inference(create_model(name))
        prof = profile_layers(m, (batches[-1], 3, args.size, args.size), channels_last=True, threads=args.threads,
                              repeats=3)
        data["waterline"] = f"{name}, batch {batches[-1]}, prepared, channels_last, fp32, eager\n" + \
            prof.summary() + "\n\n" + prof.group_table("kind") + "\n\n" + prof.table(15)
        atomic_write_text(jpath, json.dumps(data, indent=1))
        atomic_write_text(mpath, render(data))
    print(f"wrote {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
