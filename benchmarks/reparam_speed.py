"""Inference time of the train form vs the deploy (re-parameterised) form, on this CPU.

    PYTHONPATH=src python benchmarks/reparam_speed.py [--models unireplknet_t,replknet_31b,hornet_tiny_7x7]
        [--batches 1,16] [--formats nchw,channels_last] [--repeats 15] [--threads N] [--profile]
        [--out benchmarks/results/reparam_speed]

Each model gets random weights; its deploy form is `convscope.reparameterize_model(model)`. For every batch
size and memory format the two forms run interleaved (train, deploy, deploy, train, ...) after warm-up, fp32,
under torch.inference_mode, at the card's input size; the table gives the median of each and the speed-up
(train time / deploy time, the median of the per-round ratios). Writes <out>.md and <out>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

DEFAULT_MODELS = "unireplknet_t,replknet_31b,hornet_tiny_7x7"


def cpu_model() -> str:
    """/proc/cpuinfo's model name, with family/model numbers (a VM may show only "AMD EPYC") and CPU count."""
    try:
        info = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        flags = info.get("flags", "").split()
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        return (f"{info['model name']} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}, "
                f"{os.cpu_count()} logical CPUs, {isa}{', AMX' if 'amx_tile' in flags else ''})")
    except (OSError, KeyError):
        return platform.processor() or platform.machine()


def _time(model: torch.nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def _structure(model: torch.nn.Module) -> dict[str, int]:
    import torch

    bn = torch.nn.modules.batchnorm._BatchNorm
    return dict(params=sum(p.numel() for p in model.parameters()),
                convs=sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()),
                batchnorms=sum(isinstance(m, bn) for m in model.modules()))


def bench(name: str, batch: int, fmt: str, train: torch.nn.Module, deploy: torch.nn.Module, repeats: int,
          warmup: int, max_seconds: float) -> dict:
    import torch

    size = train.card.input_size
    x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    train, deploy = train.to(memory_format=memory_format), deploy.to(memory_format=memory_format)
    times = {"train": [], "deploy": []}
    with torch.inference_mode():
        for _ in range(max(1, warmup)):
            pair = _time(train, x) + _time(deploy, x)
        repeats = max(5, min(repeats, int(max_seconds / pair)))  # fewer rounds where one takes minutes
        for r in range(repeats):  # alternate the order so that neither form always runs second
            order = ("train", "deploy") if r % 2 == 0 else ("deploy", "train")
            for form in order:
                times[form].append(_time(train if form == "train" else deploy, x))
    ratios = [t / d for t, d in zip(times["train"], times["deploy"], strict=False)]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    row = dict(model=name, batch=batch, memory_format=fmt, input=f"{size[1]}x{size[2]}",
               train_ms=statistics.median(times["train"]) * 1e3, deploy_ms=statistics.median(times["deploy"]) * 1e3,
               speedup=statistics.median(ratios), speedup_q1=q1, speedup_q3=q3, repeats=repeats,
               train_ms_all=[t * 1e3 for t in times["train"]], deploy_ms_all=[t * 1e3 for t in times["deploy"]])
    print(f"{name:18s} batch {batch:2d} {fmt:13s} train {row['train_ms']:9.1f} ms  deploy {row['deploy_ms']:9.1f} ms"
          f"  speed-up x{row['speedup']:.2f}", flush=True)
    return row


def op_profile(train: torch.nn.Module, deploy: torch.nn.Module, batch: int = 1) -> list[tuple[str, float, float]]:
    """Self CPU time (ms) per aten operator, train form vs deploy form, one NCHW forward each after a warm-up."""
    import torch
    from torch.profiler import profile

    x = torch.randn(batch, *train.card.input_size, generator=torch.Generator().manual_seed(0))
    totals = {}
    with torch.inference_mode():
        for form, model in (("train", train), ("deploy", deploy)):
            model = model.to(memory_format=torch.contiguous_format)
            model(x)
            with profile() as prof:
                model(x)
            for e in prof.key_averages():
                if e.key.startswith("aten::"):
                    totals.setdefault(e.key, {"train": 0.0, "deploy": 0.0})[form] += e.self_cpu_time_total / 1e3
    rows = sorted(((k, v["train"], v["deploy"]) for k, v in totals.items()), key=lambda r: -max(r[1], r[2]))
    return [r for r in rows if max(r[1], r[2]) >= 0.5]


def markdown(data: dict) -> str:
    """The results page for the JSON this script writes (`--render FILE.json` rebuilds it without re-measuring)."""
    machine, rows, structure, st = data["machine"], data["rows"], data["structure"], data["settings"]
    same = [n for n, s in structure.items() if s["train"] == s["deploy"]]
    lines = [
        "# Train form vs deploy form (structural re-parameterisation), inference time",
        "",
        f"Command: `{data['command']}`",
        f"Machine: {machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}, fp32, "
        "torch.inference_mode, random weights, the card's input size.",
        f"Train and deploy forms interleaved after {st['warmup']} warm-up run(s); median of `runs` runs each "
        f"(up to {st['repeats']}, fewer where one pair takes over {st['max_seconds'] / st['repeats']:.0f} s); "
        "speed-up = median over rounds of train time / deploy time.",
    ] + ([f"Not registered in this checkout (skipped): {', '.join(data['missing'])}."] if data["missing"] else [])
    if same:
        lines += ["", f"{', '.join(same)}: no train-time branch or BatchNorm to fold (same parameters and modules in "
                  "both forms, table below), so `reparameterize_model` returns the same network; its speed-up "
                  "should be x1.00 and its spread shows this machine's timing noise."]
    lines += [
        "",
        "| model | batch | memory format | input | train (ms) | deploy (ms) | speed-up | speed-up IQR | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ] + [f"| {r['model']} | {r['batch']} | {r['memory_format']} | {r['input']} | {r['train_ms']:.1f} | "
         f"{r['deploy_ms']:.1f} | x{r['speedup']:.2f} | {r['speedup_q1']:.2f}-{r['speedup_q3']:.2f} | "
         f"{r['repeats']} |" for r in rows] + [
        "",
        "| model | form | params | Conv2d modules | BatchNorm modules |",
        "|---|---|---|---|---|",
    ] + [f"| {n} | {form} | {s[form]['params']:,} | {s[form]['convs']} | {s[form]['batchnorms']} |"
         for n, s in structure.items() for form in ("train", "deploy")]
    for n, prof in data["op_profiles"].items():
        lines += ["", f"Self CPU time per operator, {n}, batch 1, NCHW, one profiled run of each form (ms; "
                  "operators above 0.5 ms):", "", "| operator | train | deploy |", "|---|---|---|"]
        lines += [f"| {op} | {t:.1f} | {d:.1f} |" for op, t, d in prof]
        lines += [f"| total | {sum(r[1] for r in prof):.1f} | {sum(r[2] for r in prof):.1f} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--formats", default="nchw,channels_last")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--profile", action="store_true",
                   help="also give self CPU time per aten operator, train vs deploy, batch 1, NCHW (one run each)")
    p.add_argument("--max-seconds", type=float, default=300,
                   help="time budget per configuration: fewer repeats (at least 5) for slow ones")
    p.add_argument("--out", default=None, help="path without extension for the .md and .json results")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only rewrite the .md beside a results JSON written earlier (no measuring)")
    args = p.parse_args(argv)
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return 0

    import torch

    import convscope
    from tests.conftest import randomize_

    if args.threads:
        torch.set_num_threads(args.threads)

    known = set(convscope.list_models())
    names = [n for n in args.models.split(",") if n]
    missing = [n for n in names if n not in known]
    for n in missing:
        print(f"note: {n} is not registered in this checkout; skipped")
    names = [n for n in names if n in known]
    machine = dict(cpu=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__,
                   python=platform.python_version())
    print(f"{machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}, fp32")

    rows, structure, profiles = [], {}, {}
    for name in names:
        with torch.device("meta"):
            train = convscope.create_model(name)
        train = randomize_(train.to_empty(device="cpu"), 0).eval()
        deploy = convscope.reparameterize_model(train)
        structure[name] = dict(train=_structure(train), deploy=_structure(deploy))
        for fmt in args.formats.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                rows.append(bench(name, batch, fmt, train, deploy, args.repeats, args.warmup, args.max_seconds))
        if args.profile:
            profiles[name] = op_profile(train, deploy)
        del train, deploy

    if args.out:
        args_text = " ".join(argv if argv is not None else sys.argv[1:])
        cmd = "PYTHONPATH=src python benchmarks/reparam_speed.py " + args_text
        data = dict(command=cmd.strip(), machine=machine, missing=missing, structure=structure, rows=rows,
                    op_profiles=profiles, settings=dict(warmup=args.warmup, repeats=args.repeats,
                                                        max_seconds=args.max_seconds))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))
        out.with_suffix(".md").write_text(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
