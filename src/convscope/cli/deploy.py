"""`convscope optimize`, `prune` and `deploy`: deployment (convscope.deploy) from the command line."""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..deploy.optimize import ALL_STEPS, OPTIONAL_STEPS, STEPS
from ..deploy.prune import SCOPES
from ..models import list_models
from . import options, values


def _source_path(source: str) -> str:
    """`source` as the recipe stores it: a model name as it is, a path made absolute."""
    return source if source in list_models() or not Path(source).exists() else str(Path(source).resolve())


def _roof_peaks(threads: int):
    """This machine's fp32, bf16 and int8 ceilings at `threads` (cached by `convscope hw`), for % of roof."""
    from ..analysis.hardware import hardware_peaks

    return hardware_peaks("cpu", threads=threads, dtypes=("fp32", "bf16", "int8"))


def _cmd_optimize(args: argparse.Namespace) -> int:
    from ..deploy.optimize import eval_loader, optimize, write_result
    from ..deploy.quantize import EXTRA_HINT, available
    from ..models.source import load_source

    out = args.out
    values.check_distinct({"--out": [out, out / "recipe.json", out / "model.safetensors", out / "model.pt2"]},
                          {"the source": args.source, "--data": args.data})
    if "int8" in args.steps and not available():
        print(f"note: {EXTRA_HINT}; the int8 step is skipped", file=sys.stderr)
    model, src = load_source(args.source)
    size = values.input_shape(args.batch, src["chw"], args.size)
    loader = calibration = None
    if args.data:
        loader = list(eval_loader(src, args.data, size[0], args.limit))
        calibration = list(itertools.islice(eval_loader(src, args.data, size[0], 8 * size[0], split="train"), 8))
    print(f"optimising {args.source} at {'x'.join(map(str, size))}" +
          (f", top-1 on {args.data} ({sum(len(y) for _, y in loader)} images), budget {args.max_drop} pt"
           if loader else ", no --data: accuracy is not measured (output difference on random inputs instead)"))
    result = optimize(model, size, steps=args.steps, loader=loader, calibration=calibration, max_drop=args.max_drop,
                      max_threads=args.max_threads, repeats=args.repeats, peaks=_roof_peaks)
    b, base = result.best, result.baseline
    if not math.isfinite(b.median_ms):
        raise ValueError(f"nothing was measured ({base.note or 'no form ran'}); no recipe written")
    print(f"\nfastest form within the budget: {b.form.describe()}: {b.median_ms:.2f} ms "
          f"({b.throughput:.1f} items/s), {base.median_ms / b.median_ms:.2f}x the eager fp32 model" +
          (f", {b.roof_percent:.1f}% of its roof" if b.roof_percent is not None else "") +
          (f"; top-1 {b.top1:.2f} (eager fp32 {base.top1:.2f})" if b.top1 is not None else ""))
    if "quant_report" in result.info:
        print(result.info["quant_report"].summary())
    path, _ = write_result(result, out, _source_path(args.source), size, args.data)
    print(f"wrote {path} and the model beside it; reproduce with: convscope deploy {path}")
    return 0


def _prune_report(model: torch.nn.Module, plan, full: dict[str, int], before: int) -> None:
    """What the pruning removed, per scope (`full`: the units each had) and in parameters (`model` slimmed)."""
    after = sum(p.numel() for p in model.parameters())
    for s in full:
        kept = sum(len(k) for g, k in zip(plan.groups, plan.keep, strict=False) if g.kind == s)
        unit = dict(mlp="hidden channels", heads="heads", stage="stage channels")[s]
        print(f"{s}: kept {kept} of {full[s]} {unit} in {sum(g.kind == s for g in plan.groups)} groups")
    print(f"parameters: {before / 1e6:.3f}M -> {after / 1e6:.3f}M ({after / before:.1%})")


def _cmd_prune(args: argparse.Namespace) -> int:
    from ..deploy.optimize import eval_loader
    from ..deploy.prune import plan_pruning, pruning_spec, save_pruned, slim_
    from ..models.source import load_source

    if args.importance == "taylor" and not args.data:
        raise ValueError("--importance taylor needs --data (and a trained checkpoint) for its gradients")
    values.check_distinct({"--out": [args.out]}, {"the source": args.source, "--data": args.data})
    model, src = load_source(args.source)
    if src.get("pruned"):
        raise ValueError(f"{args.source} is already pruned; prune the model it came from")
    loader = None
    if args.data:
        loader = list(itertools.islice(eval_loader(src, args.data, args.batch, 16 * args.batch, split="train"),
                                       args.batches))
    name = src["meta"]["model"] if src.get("meta") else args.source
    before = sum(p.numel() for p in model.parameters())
    plan = plan_pruning(model, args.ratio, scopes=args.scopes, head_ratio=args.head_ratio,
                        stage_ratio=args.stage_ratio, importance=args.importance, loader=loader,
                        min_keep=args.min_keep, quantum=args.quantum)
    full = {s: sum(g.size(model) for g in plan.groups if g.kind == s) for s in args.scopes}
    slim_(model, plan)
    _prune_report(model, plan, full, before)
    kwargs = (src.get("meta") or {}).get("model_kwargs")
    path = save_pruned(model, pruning_spec(model, name, model_kwargs=kwargs), args.out)
    print(f"wrote {path}; load it with convscope.deploy.prune.load_pruned, or optimise it with "
          f"convscope optimize {path}")
    return 0


def _check_deploy_out(args: argparse.Namespace, recipe) -> Path:
    """The model file deploy --out writes; ValueError when it is one of the files the recipe stands on (the model
    optimize wrote beside it, the recipe, the source)."""
    name = "model.pt2" if recipe.form.get("dtype") == "int8" else "model.safetensors"
    beside = Path(args.recipe).parent
    values.check_distinct({"--out": [args.out, args.out / name]},
                          {"the recipe": args.recipe, f"the model beside the recipe ({name})": beside / name,
                           "the source": recipe.source, "--data": args.data or recipe.data})
    return args.out / name


def _cmd_deploy(args: argparse.Namespace) -> int:
    from ..analysis.timing import measure
    from ..deploy.optimize import Form, Recipe, apply_recipe

    recipe = Recipe.load(args.recipe)
    if args.source:
        recipe.source = args.source
    target = _check_deploy_out(args, recipe) if args.out else None
    if recipe.form.get("dtype") == "int8":
        from ..deploy.quantize import EXTRA_HINT, available
        if not available():
            raise ValueError(f"this recipe is int8: {EXTRA_HINT}")
    run, info, _, _ = apply_recipe(recipe, data=args.data)
    x = torch.randn(*recipe.input_size)
    run(x)
    stats = measure(lambda: run(x), warmup=2, repeats=args.repeats)
    print(f"{recipe.source}: {Form(**recipe.form).describe()} at {'x'.join(map(str, recipe.input_size))}: "
          f"{stats.median_s * 1e3:.2f} ms ({recipe.input_size[0] / stats.median_s:.1f} items/s); the recipe "
          f"measured {recipe.measured.get('median_ms', float('nan')):.2f} ms on {recipe.machine.get('isa', '?')}")
    if target is None:
        return 0
    if "quantized" in info:
        from ..deploy.quantize import save_int8
        print(f"wrote {save_int8(info['quantized'], target)}")
    else:
        from ..models import save_weights
        print(f"wrote {save_weights(info['module'], target)}")
    return 0


def _add_optimize(add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("optimize", _cmd_optimize, "try the inference forms that can help on this machine (fold/reparam, "
             "channels_last, bf16, torch.compile, int8, int8-mixed-bf16, threads), measure each, write the fastest "
             "within the accuracy budget and a recipe")
    sp.add_argument("source", metavar="MODEL|CHECKPOINT", help="a registered model name, a trained checkpoint or "
                    "a pruned model written by convscope prune")
    options.add_batch(sp)
    options.add_size(sp, "the card's / checkpoint's")
    sp.add_argument("--data", type=values.data_source, default=None, help="evaluation data for top-1 (needs a "
                    "checkpoint): fashion-mnist, an idx directory or an image folder; its train split calibrates int8")
    sp.add_argument("--limit", type=values.positive_int, default=2000,
                    help="evaluate on the first N images (default 2000)")
    sp.add_argument("--max-drop", type=values.float_range(0), default=1.0,
                    help="top-1 points a step may lose (default 1.0)")
    sp.add_argument("--steps", type=values.comma_list(ALL_STEPS), default=STEPS,
                    help=f"comma-separated subset of the steps, in order (default: {','.join(STEPS)}; also "
                         f"{','.join(OPTIONAL_STEPS)})")
    sp.add_argument("--max-threads", type=values.threads, default=None,
                    help="largest thread count tried (default: cores)")
    options.add_repeats(sp, 10, help="timed runs per form (medians are reported)")
    sp.add_argument("--out", type=values.output_dir, default="out/optimized",
                    help="directory for recipe.json and the model")


def _add_prune(add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("prune", _cmd_prune, "structured pruning (MLP hidden channels, attention heads, stage widths): plan, "
             "remove the units physically, write safetensors with the architecture spec")
    sp.add_argument("source", metavar="MODEL|CHECKPOINT", help="a registered model name or a trained checkpoint")
    ratio = values.float_range(0, 1, hi_open=True)
    sp.add_argument("--ratio", type=ratio, default=0.3, help="fraction of all hidden channels to remove (0.3)")
    sp.add_argument("--scopes", type=values.comma_list(SCOPES), default=("mlp",),
                    help=f"comma-separated: {', '.join(SCOPES)} (default mlp)")
    sp.add_argument("--head-ratio", type=ratio, default=None, help="fraction of all heads (default --ratio)")
    sp.add_argument("--stage-ratio", type=ratio, default=None, help="fraction of all stage channels "
                    "(default --ratio)")
    sp.add_argument("--importance", choices=("magnitude", "taylor"), default="magnitude")
    sp.add_argument("--data", type=values.data_source, default=None,
                    help="training data for Taylor importance (needs a checkpoint)")
    options.add_batch(sp, 16, help="batch size for Taylor importance")
    sp.add_argument("--batches", type=values.positive_int, default=4, help="batches for Taylor importance")
    sp.add_argument("--min-keep", type=values.float_range(0, 1, lo_open=True), default=0.1,
                    help="fraction of each group always kept")
    sp.add_argument("--quantum", type=values.positive_int, default=8, help="round kept widths to a multiple of this")
    sp.add_argument("--out", type=values.output_file(".safetensors"), default="out/pruned.safetensors",
                    help="the .safetensors file to write")


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """optimize, prune, deploy."""
    _add_optimize(add)
    _add_prune(add)
    sp = add("deploy", _cmd_deploy, "apply a recipe written by optimize: rebuild the form, time it, write it")
    sp.add_argument("recipe", type=values.input_file, help="recipe.json from convscope optimize")
    sp.add_argument("--source", default=None, help="another model name or checkpoint than the recipe's")
    sp.add_argument("--data", type=values.data_source, default=None,
                    help="calibration data for int8 (default: the recipe's)")
    options.add_repeats(sp, 10)
    sp.add_argument("--out", type=values.output_dir, default=None, help="directory to write the model into")

