"""The `convscope` command. Thin: it parses arguments, calls the library and prints.

Every subcommand is a `_cmd_<name>(args) -> int` function registered in `_build_parser`. Errors a user can fix
(unknown model, bad file, bad value) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

import torch

from . import __version__
from .models import create_model, list_models, model_card
from .utils import markdown_table, text_table


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def model_table_rows(names: Sequence[str]) -> list[list[str]]:
    rows = []
    for n in names:
        c = model_card(n)
        rows.append([n, c.family, _fmt(c.params_m), _fmt(c.macs_g), f"{c.input_size[1]}x{c.input_size[2]}",
                     _fmt(c.top1, ".1f"), c.arxiv])
    return rows


MODEL_TABLE_HEADERS = ("model", "family", "params (M)", "MACs (G)", "input", "top-1", "arXiv")


def markdown_model_table(names: Sequence[str] | None = None) -> str:
    """The README's model table: the official figures of every registered variant."""
    rows = model_table_rows(list_models() if names is None else names)
    for r in rows:
        r[0] = f"`{r[0]}`"
        r[-1] = f"[{r[-1]}](https://arxiv.org/abs/{r[-1]})"
    return markdown_table(MODEL_TABLE_HEADERS, rows)


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern, family=args.family)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
    if args.format == "markdown":
        print(markdown_model_table(names))
    elif args.format == "json":
        print(json.dumps([model_card(n).to_dict() for n in names], indent=1))
    else:
        print(text_table(MODEL_TABLE_HEADERS, model_table_rows(names), "llrrlrl"))
        print(f"\n{len(names)} models; params, MACs (1 multiply-add = 1) and top-1 are the official figures.")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    card = model_card(args.name)
    with torch.device("meta"):
        model = create_model(card.name)
    counted = sum(p.numel() for p in model.parameters())
    info = card.to_dict() | dict(
        counted_params_m=round(counted / 1e6, 4),
        num_features=model.num_features,
        feature_info=[dict(channels=f["num_chs"], reduction=f["reduction"], module=f["module"])
                      for f in model.feature_info],
    )
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if k == "feature_info":
            v = ", ".join(f"{f['channels']}@/{f['reduction']}" for f in v)
        print(f"{k.ljust(width)}  {v}")
    return 0


# -- efficiency lab ----------------------------------------------------------------------------------------------
MAX_SIDE = 4096            # --size: larger inputs would not fit in memory for any zoo model
MAX_INPUT_ELEMENTS = 2 ** 31 // 4   # batch x C x H x W: an 8 GiB fp32 input


def _input_size(args: argparse.Namespace, name: str) -> tuple[int, int, int, int]:
    """(batch, C, H, W) from --batch and --size ('224' or 'HxW'; default: the model card's size)."""
    c, h, w = model_card(name).input_size
    if args.size:
        parts = args.size.lower().split("x")
        if len(parts) not in (1, 2) or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--size must be a positive integer or HxW (e.g. 224 or 224x288); got {args.size!r}")
        h, w = int(parts[0]), int(parts[-1])
        if h > MAX_SIDE or w > MAX_SIDE:
            raise ValueError(f"--size must be at most {MAX_SIDE} per side; got {args.size!r}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1; got {args.batch}")
    if args.batch * c * h * w > MAX_INPUT_ELEMENTS:
        raise ValueError(f"--batch {args.batch} at {h}x{w} is a {args.batch * c * h * w * 4 / 2 ** 30:.0f} GiB input; "
                         "choose a smaller batch or size")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1; got {args.repeats}")
    return args.batch, c, h, w


def _check_lab_outputs(args: argparse.Namespace) -> None:
    """Before any measuring: the report files can be written, and --html has matplotlib."""
    from .extras import require
    from .files import check_output_file

    if args.json:
        check_output_file(args.json, "--json")
    if args.html:
        check_output_file(args.html, "--html")
        require("matplotlib", "--html (the report's charts)")
    if getattr(args, "top", 1) < 1:
        raise ValueError(f"--top must be >= 1; got {args.top}")


def _command(args: argparse.Namespace) -> str:
    import shlex
    return shlex.join(["convscope", *args.argv])


def _cmd_hw(args: argparse.Namespace) -> int:
    from .analysis.hardware import hardware_peaks
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}")
    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    peaks = hardware_peaks(args.device, threads=args.threads, refresh=args.refresh, dtypes=dtypes)
    print(peaks.to_json() if args.json else peaks.summary())
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from .analysis.counting import count
    from .analysis.timing import benchmark
    name = model_card(args.name).name
    size = _input_size(args, name)
    _check_lab_outputs(args)
    model = create_model(name)
    counts = count(model, size)
    print(counts.summary())
    bench = benchmark(model, size, mode="train" if args.train else "inference", dtype=args.dtype,
                      channels_last=args.channels_last, compile=args.compile, threads=args.threads,
                      device=args.device, repeats=args.repeats)
    print(f"\n{bench.describe()}\n{bench.table()}")
    if not (args.layers or args.html or args.json):
        return 0
    from .analysis.waterline import profile_layers
    prof = profile_layers(model, size, dtype=args.dtype, channels_last=args.channels_last, threads=args.threads,
                          device=args.device, repeats=args.repeats, clock=args.clock)
    print(f"\nper-layer waterline (eager inference forward{', without torch.compile' if args.compile else ''}):")
    print(prof.summary())
    print(f"\n{prof.group_table('kind')}\n\n{prof.table(args.top)}")
    if args.json:
        prof.to_json(args.json)
        print(f"\nwrote {args.json}")
    if args.html:
        from .analysis.report import profile_report, write_report
        write_report(profile_report(prof, benchmark=bench, command=_command(args)), args.html)
        print(f"wrote {args.html}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .analysis.waterline import compare_models
    names = [model_card(n).name for n in args.names]
    sizes = {_input_size(args, n) for n in names}
    _check_lab_outputs(args)
    if len(sizes) > 1:
        raise ValueError(f"the models have different default input sizes {sorted(sizes)}; pass --size")
    cmp = compare_models(names, sizes.pop(), dtype=args.dtype, channels_last=args.channels_last,
                         threads=args.threads, device=args.device, repeats=args.repeats)
    print(f"{cmp.describe()}\n{cmp.table()}")
    if args.json:
        cmp.to_json(args.json)
        print(f"\nwrote {args.json}")
    if args.html:
        from .analysis.report import compare_report, write_report
        write_report(compare_report(cmp, command=_command(args)), args.html)
        print(f"wrote {args.html}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import config_from_args, summarize, train

    result = train(config_from_args(args))
    if result.rank == 0:
        print(summarize(result))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint
    from .train.summary import dumps_confusion

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1; got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0; got {args.workers}")
    r = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.limit, args.device,
                            args.workers)
    if r["skipped"]:
        print(f"convscope: warning: {len(r['skipped'])} of {r['images']} images could not be read and are not "
              f"counted: " + "; ".join(r["skipped"][:5]) + (" ..." if len(r["skipped"]) > 5 else ""),
              file=sys.stderr)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']} on {args.data} ({args.split}, {r['n']} images): top-1 {r['top1']:.2f}%  "
          f"top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    print(dumps_confusion(r["confusion"], r["class_names"]))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .train import predict_images

    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1; got {args.topk}")
    results = predict_images(args.checkpoint, args.images, args.topk, args.device)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{t['label']} ({t['prob']:.3f})" for t in r["top"]))
    return 0


def _cmd_bench_mixers(args: argparse.Namespace) -> int:
    from .bench_mixers import run_mixer_bench, write_outputs

    mixers = [m for m in args.mixers.split(",") if m] if args.mixers else None
    result = run_mixer_bench(args.data, args.epochs, args.limit_train, limit_eval=args.limit_eval, mixers=mixers,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads,
                             latency_batch=args.latency_batch, repeats=args.repeats)
    for f in write_outputs(result, args.out, command="convscope " + " ".join(args.argv)):
        print(f"wrote {f}")
    if not any(f.endswith(".png") for f in result.files):
        print("no Pareto plot: matplotlib is not installed (pip install 'convscope[lab]')")
    return 0


# -- deployment (convscope.deploy) ------------------------------------------------------------------------------------
def _deploy_size(args: argparse.Namespace, chw: tuple[int, ...]) -> tuple[int, int, int, int]:
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1; got {args.batch}")
    c, h, w = chw
    if getattr(args, "size", None):
        parts = args.size.lower().split("x")
        if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--size must be a positive integer or HxW (e.g. 224 or 224x288); got {args.size!r}")
        h, w = int(parts[0]), int(parts[-1])
    return args.batch, c, h, w


def _cmd_optimize(args: argparse.Namespace) -> int:
    import itertools

    from .deploy.optimize import STEPS, eval_loader, optimize, write_result
    from .deploy.quantize import EXTRA_HINT, available
    from .models.source import load_source
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip()) if args.steps else STEPS
    if set(steps) - set(STEPS):
        raise ValueError(f"--steps must be some of {','.join(STEPS)}; got {args.steps!r}")
    if args.max_drop < 0:
        raise ValueError(f"--max-drop must be >= 0; got {args.max_drop}")
    if "int8" in steps and not available():
        print(f"note: {EXTRA_HINT}; the int8 step is skipped", file=sys.stderr)
    model, src = load_source(args.source)
    size = _deploy_size(args, src["chw"])
    loader = calibration = None
    if args.data:
        loader = list(eval_loader(src, args.data, size[0], args.limit))
        calibration = list(itertools.islice(eval_loader(src, args.data, size[0], 8 * size[0], split="train"), 8))
    print(f"optimising {args.source} at {'x'.join(map(str, size))}" +
          (f", top-1 on {args.data} ({sum(len(y) for _, y in loader)} images), budget {args.max_drop} pt"
           if loader else ", no --data: accuracy is not measured (output difference on random inputs instead)"))
    result = optimize(model, size, steps=steps, loader=loader, calibration=calibration, max_drop=args.max_drop,
                      max_threads=args.max_threads, repeats=args.repeats)
    b, base = result.best, result.baseline
    print(f"\nfastest form within the budget: {b.form.describe()}: {b.median_ms:.2f} ms "
          f"({b.throughput:.1f} items/s), {base.median_ms / b.median_ms:.2f}x the eager fp32 model" +
          (f"; top-1 {b.top1:.2f} (eager fp32 {base.top1:.2f})" if b.top1 is not None else ""))
    if "quant_report" in result.info:
        print(result.info["quant_report"].summary())
    path, _ = write_result(result, args.out, args.source, size, args.data)
    print(f"wrote {path} and the model beside it; reproduce with: convscope deploy {path}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    import itertools
    from pathlib import Path

    from .deploy.optimize import eval_loader
    from .deploy.prune import SCOPES, plan_pruning, pruning_spec, save_pruned, slim_
    from .files import check_output_file
    from .models.source import load_source
    scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
    if not scopes or set(scopes) - set(SCOPES):
        raise ValueError(f"--scopes must be some of {','.join(SCOPES)}; got {args.scopes!r}")
    if args.importance == "taylor" and not args.data:
        raise ValueError("--importance taylor needs --data (and a trained checkpoint) for its gradients")
    if args.batches < 1:
        raise ValueError(f"--batches must be >= 1; got {args.batches}")
    out = Path(args.out)
    if out.is_dir() or out.suffix != ".safetensors":
        raise ValueError(f"--out must be a .safetensors file path; got {args.out!r}")
    check_output_file(out, "--out")
    model, src = load_source(args.source)
    if src.get("pruned"):
        raise ValueError(f"{args.source} is already pruned; prune the model it came from")
    loader = None
    if args.data:
        loader = list(itertools.islice(eval_loader(src, args.data, args.batch, 16 * args.batch, split="train"),
                                       args.batches))
    name = src["meta"]["model"] if src.get("meta") else args.source
    before = sum(p.numel() for p in model.parameters())
    plan = plan_pruning(model, args.ratio, scopes=scopes, head_ratio=args.head_ratio, stage_ratio=args.stage_ratio,
                        importance=args.importance, loader=loader, min_keep=args.min_keep, quantum=args.quantum)
    full = {s: sum(g.size(model) for g in plan.groups if g.kind == s) for s in scopes}
    slim_(model, plan)
    after = sum(p.numel() for p in model.parameters())
    for s in scopes:
        kept = sum(len(k) for g, k in zip(plan.groups, plan.keep, strict=False) if g.kind == s)
        unit = dict(mlp="hidden channels", heads="heads", stage="stage channels")[s]
        print(f"{s}: kept {kept} of {full[s]} {unit} in {sum(g.kind == s for g in plan.groups)} groups")
    print(f"parameters: {before / 1e6:.3f}M -> {after / 1e6:.3f}M ({after / before:.1%})")
    kwargs = (src.get("meta") or {}).get("model_kwargs")
    path = save_pruned(model, pruning_spec(model, name, model_kwargs=kwargs), out)
    print(f"wrote {path}; load it with convscope.deploy.prune.load_pruned, or optimise it with "
          f"convscope optimize {path}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from .analysis.timing import measure
    from .deploy.optimize import Recipe, apply_recipe
    recipe = Recipe.load(args.recipe)
    if args.source:
        recipe.source = args.source
    if recipe.form.get("dtype") == "int8":
        from .deploy.quantize import EXTRA_HINT, available
        if not available():
            raise ValueError(f"this recipe is int8: {EXTRA_HINT}")
    run, info, _, _ = apply_recipe(recipe, data=args.data)
    x = torch.randn(*recipe.input_size)
    run(x)
    stats = measure(lambda: run(x), warmup=2, repeats=args.repeats)
    from .deploy.optimize import Form
    print(f"{recipe.source}: {Form(**recipe.form).describe()} at {'x'.join(map(str, recipe.input_size))}: "
          f"{stats.median_s * 1e3:.2f} ms ({recipe.input_size[0] / stats.median_s:.1f} items/s); the recipe "
          f"measured {recipe.measured.get('median_ms', float('nan')):.2f} ms on {recipe.machine.get('isa', '?')}")
    if args.out:
        from pathlib import Path
        out = Path(args.out)
        if "quantized" in info:
            from .deploy.quantize import save_int8
            print(f"wrote {save_int8(info['quantized'], out / 'model.pt2')}")
        else:
            from .models import save_weights
            print(f"wrote {save_weights(info['module'], out / 'model.safetensors')}")
    return 0


def _add_deploy_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("optimize", _cmd_optimize, "try the inference forms that can help on this machine (fold/reparam, "
             "channels_last, bf16, torch.compile, int8, threads), measure each, write the fastest within the "
             "accuracy budget and a recipe")
    sp.add_argument("source", metavar="MODEL|CHECKPOINT", help="a registered model name, a trained checkpoint or "
                    "a pruned model written by convscope prune")
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--size", default=None, help="input size, 224 or HxW (default: the card's / checkpoint's)")
    sp.add_argument("--data", default=None, help="evaluation data for top-1 (needs a checkpoint): fashion-mnist, "
                    "an idx directory or an image folder; its train split calibrates int8")
    sp.add_argument("--limit", type=int, default=2000, help="evaluate on the first N images (default 2000)")
    sp.add_argument("--max-drop", type=float, default=1.0, help="top-1 points a step may lose (default 1.0)")
    sp.add_argument("--steps", default=None, help="comma-separated subset of the steps, in order "
                    "(default: prepare,channels_last,bf16,compile,int8,threads)")
    sp.add_argument("--max-threads", type=int, default=None, help="largest thread count tried (default: cores)")
    sp.add_argument("--repeats", type=int, default=10, help="timed runs per form (medians are reported)")
    sp.add_argument("--out", default="out/optimized", help="directory for recipe.json and the model")

    sp = add("prune", _cmd_prune, "structured pruning (MLP hidden channels, attention heads, stage widths): plan, "
             "remove the units physically, write safetensors with the architecture spec")
    sp.add_argument("source", metavar="MODEL|CHECKPOINT", help="a registered model name or a trained checkpoint")
    sp.add_argument("--ratio", type=float, default=0.3, help="fraction of all hidden channels to remove (0.3)")
    sp.add_argument("--scopes", default="mlp", help="comma-separated: mlp, heads, stage (default mlp)")
    sp.add_argument("--head-ratio", type=float, default=None, help="fraction of all heads (default --ratio)")
    sp.add_argument("--stage-ratio", type=float, default=None, help="fraction of all stage channels "
                    "(default --ratio)")
    sp.add_argument("--importance", choices=("magnitude", "taylor"), default="magnitude")
    sp.add_argument("--data", default=None, help="training data for Taylor importance (needs a checkpoint)")
    sp.add_argument("--batch", type=int, default=16, help="batch size for Taylor importance")
    sp.add_argument("--batches", type=int, default=4, help="batches for Taylor importance")
    sp.add_argument("--min-keep", type=float, default=0.1, help="fraction of each group always kept")
    sp.add_argument("--quantum", type=int, default=8, help="round kept widths to a multiple of this")
    sp.add_argument("--out", default="out/pruned.safetensors", help="the .safetensors file to write")

    sp = add("deploy", _cmd_deploy, "apply a recipe written by optimize: rebuild the form, time it, write it")
    sp.add_argument("recipe", help="recipe.json from convscope optimize")
    sp.add_argument("--source", default=None, help="another model name or checkpoint than the recipe's")
    sp.add_argument("--data", default=None, help="calibration data for int8 (default: the recipe's)")
    sp.add_argument("--repeats", type=int, default=10)
    sp.add_argument("--out", default=None, help="directory to write the model into")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convscope", description="Modern ConvNets: model zoo, efficiency lab, "
                                "training and deployment.")
    p.add_argument("--version", action="version", version=f"convscope {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    sp = add("list", _cmd_list, "list registered models with their official params, MACs and input size")
    sp.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'convnext*'")
    sp.add_argument("--family", default=None)
    sp.add_argument("--format", choices=("table", "markdown", "json"), default="table")

    sp = add("info", _cmd_info, "show a model's card, counted parameters and feature maps")
    sp.add_argument("name")
    sp.add_argument("--json", action="store_true")

    def lab_options(sp: argparse.ArgumentParser, repeats: int) -> None:
        sp.add_argument("--batch", type=int, default=1)
        sp.add_argument("--size", default=None, help="input size, 224 or HxW (default: the model card's)")
        sp.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="latency: autocast to this dtype; layers: the model cast to it")
        sp.add_argument("--channels-last", action="store_true")
        sp.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
        sp.add_argument("--device", default="cpu", help="cpu, cuda or auto")
        sp.add_argument("--repeats", type=int, default=repeats, help="timed runs (medians are reported)")
        sp.add_argument("--html", default=None, metavar="FILE",
                        help="write a self-contained HTML report (profile: implies --layers)")
        sp.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON (profile: the "
                        "layer profile, implies --layers)")

    sp = add("hw", _cmd_hw, "measure (or show the cached) compute peaks and memory bandwidth of this machine")
    sp.add_argument("--refresh", action="store_true", help="measure again instead of reading the cache")
    sp.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when present)")
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--dtypes", default="fp32,bf16,fp16", help="compute peaks to measure (comma-separated)")
    sp.add_argument("--json", action="store_true")

    sp = add("profile", _cmd_profile, "count and time a model; with --layers, per-layer waterline analysis")
    sp.add_argument("name")
    lab_options(sp, repeats=10)
    sp.add_argument("--compile", action="store_true", help="torch.compile for the latency (compile time "
                    "reported apart); layers are always profiled eagerly")
    sp.add_argument("--train", action="store_true", help="time training steps (forward, backward, SGD step)")
    sp.add_argument("--layers", action="store_true", help="per-layer times, bounds and efficiencies")
    sp.add_argument("--top", type=int, default=25, help="slowest layers to list")
    sp.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="time layers by the wall clock (torch.profiler) or by the thread's CPU time (one CPU "
                         "thread only; steadier on a busy machine)")

    sp = add("compare", _cmd_compare, "count and time several models; efficiency-gap and Pareto charts")
    sp.add_argument("names", nargs="+", metavar="NAME")
    lab_options(sp, repeats=10)

    from .train.config import add_train_arguments

    sp = add("train", _cmd_train, "train a model (single process, or DDP under torchrun)")
    add_train_arguments(sp)

    sp = add("eval", _cmd_eval, "evaluate a trained model: top-1, top-5, loss, confusion matrix")
    sp.add_argument("--checkpoint", required=True, help="weights file written by train (or its run directory)")
    sp.add_argument("--data", default="fashion-mnist", help="fashion-mnist, an idx directory or an image folder")
    sp.add_argument("--split", default="test", help="train/test for Fashion-MNIST; a subdirectory of a folder")
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--limit", type=int, default=None, help="only the first N images")
    sp.add_argument("--workers", type=int, default=0)
    sp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    sp.add_argument("--json", action="store_true")

    sp = add("predict", _cmd_predict, "classify image files with a trained model")
    sp.add_argument("--checkpoint", required=True, help="weights file written by train (or its run directory)")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--topk", type=int, default=3)
    sp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    sp.add_argument("--json", action="store_true")

    sp = add("bench-mixers", _cmd_bench_mixers, "train, count and time every token mixer in one MetaFormer "
             "skeleton (the mixer_bench_* variants); table and Pareto plots")
    sp.add_argument("--data", default="fashion-mnist", help="fashion-mnist, an idx directory, an image folder or "
                    "synthetic")
    sp.add_argument("--epochs", type=int, default=1)
    sp.add_argument("--limit-train", type=int, default=None, metavar="K", help="only the first K training images")
    sp.add_argument("--limit-eval", type=int, default=None, metavar="K", help="only the first K test images")
    sp.add_argument("--mixers", default=None, help="comma-separated mixers (default: every mixer_bench variant)")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--lr", type=float, default=2e-3)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--latency-batch", type=int, default=1)
    sp.add_argument("--repeats", type=int, default=20, help="timed runs per latency (median reported)")
    sp.add_argument("--out", default="runs/mixer_bench", help="directory for mixer_bench.md/.json/.png")
    _add_deploy_commands(add)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (exit status 2) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # argparse drops a value of "--" given as `--flag=--` and leaves the flag an empty list
        for a in args or ():
            if isinstance(a, str) and a.startswith("--") and a.endswith("=--"):
                self.error(f"argument {a.split('=', 1)[0]}: expected a value; got '--'")
        return super().parse_known_args(args, namespace)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as e:   # --help, --version (0) and usage errors (2), already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from .train.engine import TrainingDiverged
    try:
        return int(args.func(args) or 0)
    except TrainingDiverged as e:
        print(f"convscope: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"convscope: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
