"""The demo model's deploy targets: int8 PTQ and 30% MLP pruning + one epoch of fine-tuning each lose <= 1 point.

The model is the Fashion-MNIST demo model (convnext_atto, 1x32x32, trained as examples/demo.py's CONFIG does):
--checkpoint RUN_DIR of such a run, or, without it, this script trains one with that config first (~6 min on an
idle 2-core machine, one thread). Then, all top-1 figures on the 10,000 test images with the same evaluation:

  (a) int8 PTQ (convscope.deploy.quantize: PT2E, x86 Inductor quantizer) of the prepared model (BatchNorms
      folded), calibrated on --calib-batches batches of training images; top-1 of the converted graph run
      eagerly (the reference int8 arithmetic) and, unless --no-compile, compiled (Inductor's int8 kernels).
      Target: <= 1 point below the fp32 model.
  (b) pruning --ratio of the MLP hidden channels (convscope.deploy.prune, magnitude importance, widths rounded to
      8), then fine-tuning --ft-epochs epoch through the training engine (`convscope train --init-from
      pruned.safetensors`, the demo config at --ft-lr). Target: <= 1 point below fp32 after fine-tuning, and
      faster: the latency ratio pruned / unpruned, both prepared and channels-last fp32 (the deploy float form),
      at batch 128 and batch 1, measured alternately (round-robin over the forms for every repeat, so load
      changes hit all forms alike), medians.

    python benchmarks/demo_deploy.py --checkpoint runs/demo --threads 1 --out benchmarks/results/demo_deploy

Writes OUT.md and OUT.json; --smoke checks every step on 512 training and 256 test images in seconds
(tests/test_benchmarks.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, metavar="RUN_DIR",
                   help="a trained demo run (default: train one with examples/demo.py's CONFIG into WORK/base)")
    p.add_argument("--work", default="runs/demo_deploy", help="scratch directory (pruned model, fine-tuning run)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of the MLP hidden channels to prune")
    p.add_argument("--ft-epochs", type=int, default=1)
    p.add_argument("--ft-lr", type=float, default=5e-4, help="peak learning rate of the fine-tuning")
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches of 128 training images")
    p.add_argument("--repeats", type=int, default=15, help="alternating latency repeats per form")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled int8 form (accuracy and latency)")
    p.add_argument("--smoke", action="store_true",
                   help="512 training / 256 test images, 1-epoch base run, 3 repeats, no compile: checks the "
                        "steps, not the targets")
    p.add_argument("--out", default="benchmarks/results/demo_deploy", help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    for name in ("threads", "ft_epochs", "calib_batches", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if not 0 < args.ratio < 1:
        p.error(f"--ratio must be in (0, 1); got {args.ratio}")
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        p.error(f"--checkpoint {args.checkpoint}: no such run directory or weights file")
    return args


def demo_config():
    sys.path.insert(0, str(ROOT / "examples"))
    from demo import CONFIG
    return CONFIG


def top1(run, loader, batch=None) -> float:
    """Top-1 (%) of `run` (x -> logits) over `loader`; batches are padded to `batch` for fixed-shape forms."""
    import torch
    correct = n = 0
    with torch.inference_mode():
        for x, y in loader:
            k = x.shape[0]
            if batch is not None and k < batch:
                x = torch.cat([x, x[:1].expand(batch - k, *x.shape[1:])])
            correct += int((run(x)[:k].argmax(1) == y).sum())
            n += k
    return 100.0 * correct / n


def channels_last_runner(fn):
    """x -> fn(x in channels-last memory format)."""
    import torch

    def run(x):
        return fn(x.contiguous(memory_format=torch.channels_last))
    return run


def base_config_check(run_dir, cfg) -> str:
    """How the checkpoint's run was configured against examples/demo.py's CONFIG (from its config.json)."""
    from convscope.train.config import NON_SEMANTIC, load_run_config
    try:
        run_cfg = load_run_config(Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent)
    except (FileNotFoundError, ValueError) as e:
        return f"its training settings are unknown ({e})"
    a, b = dataclasses.asdict(run_cfg), dataclasses.asdict(demo_config())
    diff = [f"{k}={a[k]!r} (CONFIG: {b[k]!r})" for k in a if k not in NON_SEMANTIC and k != "time_budget"
            and json.dumps(a[k]) != json.dumps(b[k])]
    budget = "no time budget" if run_cfg.time_budget is None else f"time budget {run_cfg.time_budget:.0f} s"
    return (f"trained with examples/demo.py's CONFIG ({run_cfg.epochs} epochs, {budget}, {run_cfg.threads} "
            "thread(s))" if not diff else "trained with settings that differ from examples/demo.py's CONFIG: "
            + ", ".join(diff))


def alternate(runs: dict, x, repeats: int, calls: int) -> dict[str, dict]:
    """Round-robin timing: each repeat times `calls` calls of every form in turn; per form the median time per
    call, and per form the median of its per-repeat ratio to the first form."""
    import torch
    names = list(runs)
    times = {n: [] for n in names}
    with torch.inference_mode():
        for fn in runs.values():   # warm-up
            fn(x)
            fn(x)
        for r in range(repeats):
            order = names if r % 2 == 0 else names[::-1]   # alternate the order too
            for n in order:
                t0 = time.perf_counter()
                for _ in range(calls):
                    runs[n](x)
                times[n].append((time.perf_counter() - t0) / calls)
    first = names[0]
    return {n: dict(median_ms=1e3 * statistics.median(t), min_ms=1e3 * min(t),
                    ratio=statistics.median(a / b for a, b in zip(t, times[first], strict=False)), repeats=len(t))
            for n, t in times.items()}


def main(argv=None) -> int:
    args = parse(argv)
    from convscope.utils import threads_set
    with threads_set(args.threads):
        return _main(args, argv)


def _main(args, argv) -> int:
    import copy
    import itertools
    import shutil

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import cpu_name, load_average

    from convscope.deploy import prepare_for_inference
    from convscope.deploy.machine import cpu_isa
    from convscope.deploy.optimize import eval_loader
    from convscope.deploy.prune import hidden_groups, prune, pruning_spec, save_pruned
    from convscope.deploy.quantize import archive_sizes, available, compile_int8, quantize_int8, save_int8
    from convscope.files import atomic_write_text
    from convscope.models import save_weights
    from convscope.models.source import load_source
    from convscope.train import load_model, train

    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    t_start = time.perf_counter()
    cfg = dataclasses.replace(demo_config(), threads=args.threads, progress="plain")
    if args.smoke:
        cfg = dataclasses.replace(cfg, epochs=1, data_limit=512, eval_limit=256, quiet=True)
        args.no_compile = True
    eval_limit = 256 if args.smoke else None
    data = dict(machine=cpu_name(), isa=cpu_isa()["summary"], torch=torch.__version__, threads=args.threads,
                command="python " + shlex.join(["benchmarks/demo_deploy.py", *(argv or sys.argv[1:])]),
                load_before=load_before, smoke=args.smoke)

    # -- the fp32 model -------------------------------------------------------------------------------------------
    run_dir = args.checkpoint
    if run_dir is None:
        run_dir = str(work / "base")
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"training the demo model into {run_dir} ({cfg.epochs} epochs)", flush=True)
        t0 = time.perf_counter()
        train(dataclasses.replace(cfg, out=run_dir))
        data["base_train_s"] = time.perf_counter() - t0
    data["checkpoint"] = run_dir
    data["base_config"] = base_config_check(run_dir, cfg)
    model, src = load_source(run_dir)
    batch = cfg.batch_size
    chw = src["chw"]
    test = list(eval_loader(src, "fashion-mnist", batch, eval_limit))
    calib = [x for x, _ in itertools.islice(eval_loader(src, "fashion-mnist", batch, batch * args.calib_batches,
                                                        split="train"), args.calib_batches)]
    n_test = sum(len(y) for _, y in test)
    acc = {"fp32": top1(model, test)}
    prepared = prepare_for_inference(copy.deepcopy(model)).to(memory_format=torch.channels_last)
    acc["fp32 prepared, channels_last"] = top1(prepared, [(x.contiguous(memory_format=torch.channels_last), y)
                                                          for x, y in test])
    sizes = {"fp32 (safetensors)": save_weights(model, work / "fp32.safetensors").stat().st_size}
    print(f"fp32: top-1 {acc['fp32']:.2f} on {n_test} test images", flush=True)

    # -- (a) int8 PTQ ---------------------------------------------------------------------------------------------
    int8_fn = None
    if not available():
        data["int8_error"] = "torchao missing: pip install \"convscope[deploy]\""
    else:
        t0 = time.perf_counter()
        q = quantize_int8(prepare_for_inference(copy.deepcopy(model)), calib, torch.zeros(batch, *chw),
                          num_batches=args.calib_batches)
        data["int8_build_s"] = time.perf_counter() - t0
        acc["int8 PTQ (reference, eager)"] = top1(q.module, test, batch)
        path = save_int8(q, work / "int8.pt2")
        sizes["int8 (torch.export .pt2)"] = path.stat().st_size
        sizes["int8: of which tensor data"] = archive_sizes(path)["weights"]
        data["int8_report"] = dict(q.report.to_dict(), summary=q.report.summary())
        if not args.no_compile:
            t0 = time.perf_counter()
            fn = compile_int8(q.module)
            fn(torch.zeros(batch, *chw).contiguous(memory_format=torch.channels_last))
            data["int8_compile_s"] = time.perf_counter() - t0

            int8_fn = channels_last_runner(fn)
            acc["int8 PTQ (compiled)"] = top1(int8_fn, test, batch)
        print(f"int8: {acc}", flush=True)

    # -- (b) pruning, then fine-tuning through the engine ---------------------------------------------------------
    pruned = copy.deepcopy(model)
    full = {g.path: g.modules(pruned)[1].weight.shape[0] for g in hidden_groups(pruned)}
    pruned, plan = prune(pruned, args.ratio)
    widths = plan.widths()
    data["pruning"] = dict(ratio=args.ratio, removed=1 - sum(widths.values()) / sum(full.values()),
                           widths={k: [full[k], widths[k]] for k in full},
                           params=[sum(p.numel() for p in model.parameters()),
                                   sum(p.numel() for p in pruned.parameters())])
    acc["pruned, before fine-tuning"] = top1(pruned.eval(), test)
    ppath = save_pruned(pruned, pruning_spec(pruned, src["meta"]["model"]), work / "pruned.safetensors")
    sizes["pruned (safetensors)"] = ppath.stat().st_size
    ft_dir = work / "finetune"
    shutil.rmtree(ft_dir, ignore_errors=True)
    ft_cfg = dataclasses.replace(cfg, out=str(ft_dir), epochs=args.ft_epochs, lr=args.ft_lr, warmup_epochs=0.1,
                                 init_from=str(ppath))
    print(f"fine-tuning the pruned model ({args.ft_epochs} epoch, lr {args.ft_lr:g})", flush=True)
    t0 = time.perf_counter()
    train(ft_cfg)
    data["finetune_s"] = time.perf_counter() - t0
    data["finetune_config"] = {k: v for k, v in dataclasses.asdict(ft_cfg).items()
                               if k in ("epochs", "lr", "warmup_epochs", "batch_size", "weight_decay",
                                        "label_smoothing", "hflip", "channels_last", "data_limit", "init_from")}
    tuned, _ = load_model(ft_dir / "last.safetensors")
    acc["pruned, after fine-tuning"] = top1(tuned, test)
    sizes["pruned + fine-tuned (run weights)"] = (ft_dir / "last.safetensors").stat().st_size
    print(f"pruned: {acc}", flush=True)

    # -- latency: pruned vs unpruned (deploy float form), alternately ---------------------------------------------
    tuned_prep = prepare_for_inference(copy.deepcopy(tuned)).to(memory_format=torch.channels_last)
    float_run = channels_last_runner
    latency = {}
    reps = 3 if args.smoke else args.repeats
    for b, calls in ((batch, 1), (1, 20)):
        x = torch.randn(b, *chw, generator=torch.Generator().manual_seed(0))
        runs = {"fp32 unpruned": float_run(prepared), "fp32 pruned + fine-tuned": float_run(tuned_prep)}
        if int8_fn is not None and b == batch:
            runs["int8 PTQ (compiled)"] = int8_fn
        latency[str(b)] = alternate(runs, x, reps, calls)
        print(f"batch {b}: {latency[str(b)]}", flush=True)
    data.update(n_test=n_test, top1=acc, sizes=sizes, latency=latency, load_after=load_average(),
                wall_s=time.perf_counter() - t_start,
                targets=dict(int8_change=acc.get("int8 PTQ (reference, eager)", float("nan")) - acc["fp32"],
                             pruned_change=acc["pruned, after fine-tuning"] - acc["fp32"],
                             pruned_ratio_b128=latency[str(batch)]["fp32 pruned + fine-tuned"]["ratio"],
                             pruned_ratio_b1=latency["1"]["fp32 pruned + fine-tuned"]["ratio"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1))
    atomic_write_text(out.with_suffix(".md"), render(data))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


def render(d: dict) -> str:
    t = d["targets"]
    ok = {True: "met", False: "**not met**"}
    acc = d["top1"]
    L = ["# Demo model: int8 and pruning targets\n",
         f"Command: `{d['command']}`" + (" (a smoke run: tiny data, not the targets)" if d["smoke"] else "") + "\n",
         f"Machine: {d['machine']}; ISA: {d['isa']}; torch {d['torch']}; {d['threads']} thread(s); load average "
         f"(1/5/15 min) {d['load_before']} before, {d['load_after']} after (a shared 2-core machine). Checkpoint: "
         f"`{d['checkpoint']}`, convnext_atto 1x32x32, {d['base_config']}. Accuracies do not depend on the load; "
         f"latencies are ratios measured alternately in one run.\n",
         "## Targets\n",
         "| target | result | |", "|---|---|---|",
         f"| (a) int8 PTQ loses <= 1 point | {t['int8_change']:+.2f} points | {ok[t['int8_change'] >= -1.0]} |",
         f"| (b) 30% MLP pruning + fine-tuning loses <= 1 point | {t['pruned_change']:+.2f} points | "
         f"{ok[t['pruned_change'] >= -1.0]} |",
         f"| (b) ... and is faster (latency pruned / unpruned, batch 128) | {t['pruned_ratio_b128']:.3f} | "
         f"{ok[t['pruned_ratio_b128'] < 1.0]} |",
         f"| (b) ... and at batch 1 | {t['pruned_ratio_b1']:.3f} | {ok[t['pruned_ratio_b1'] < 1.0]} |",
         "\n(points: the form's top-1 minus the fp32 model's, on the same test images; a ratio below 1 is faster)\n",
         f"## Top-1 on {d['n_test']:,} Fashion-MNIST test images\n", "| model | top-1 (%) |", "|---|---:|"]
    L += [f"| {k} | {v:.2f} |" for k, v in acc.items()]
    p = d["pruning"]
    L += [f"\nPruning: {p['ratio']:.0%} asked, {p['removed']:.1%} of the MLP hidden channels removed (widths rounded "
          f"to 8, magnitude importance); parameters {p['params'][0]:,} -> {p['params'][1]:,}. Per block (hidden "
          "width before -> after): " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in p["widths"].items()) + ".",
          "\nFine-tuning: the training engine from the pruned file (`init_from`), "
          + ", ".join(f"{k}={v}" for k, v in d["finetune_config"].items() if k != "init_from")
          + f"; {d['finetune_s']:.0f} s.\n",
          "## Sizes (bytes on disk)\n", "| file | bytes |", "|---|---:|"]
    L += [f"| {k} | {v:,} |" for k, v in d["sizes"].items()]
    L += ["\n## Latency (median over alternating repeats)\n",
          "The float forms are the deploy form: prepared (BatchNorm folded) and channels-last, fp32, eager. "
          "Batch-1 figures are per call over blocks of 20 calls. `ratio`: median over repeats of the form's time "
          "over the unpruned model's in the same repeat.\n",
          "| batch | form | median ms | min ms | ratio to fp32 unpruned | repeats |", "|---:|---|---:|---:|---:|---:|"]
    for b, forms in d["latency"].items():
        for name, v in forms.items():
            L.append(f"| {b} | {name} | {v['median_ms']:.2f} | {v['min_ms']:.2f} | {v['ratio']:.3f} | "
                     f"{v['repeats']} |")
    if "int8_report" in d:
        L += ["\n## int8 report\n", "```", d["int8_report"]["summary"], "```"]
        if "int8_compile_s" in d:
            L.append(f"\nint8 build (export, calibrate, convert) {d['int8_build_s']:.0f} s; compile "
                     f"{d['int8_compile_s']:.0f} s (not in the latencies).")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
