"""`convscope bench-mixers`: the mixer bench (convscope.bench.mixers)."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from . import options, values


def _cmd_bench_mixers(args: argparse.Namespace) -> int:
    from ..bench.mixers import run_mixer_bench, write_outputs

    values.check_distinct({"--out": [args.out]}, {"--data": args.data})
    result = run_mixer_bench(args.data, args.epochs, args.limit_train, limit_eval=args.limit_eval, mixers=args.mixers,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads,
                             latency_batch=args.latency_batch, repeats=args.repeats, out=args.out)
    for f in write_outputs(result, args.out, command="convscope " + " ".join(args.argv)):
        print(f"wrote {f}")
    if not any(f.endswith(".png") for f in result.files):
        print("no Pareto plot: matplotlib is not installed (pip install 'convscope[lab]')")
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """bench-mixers."""
    sp = add("bench-mixers", _cmd_bench_mixers, "train, count and time every token mixer in one MetaFormer "
             "skeleton (the mixer_bench_* variants); table and Pareto plots")
    sp.add_argument("--data", type=values.data_source, default="fashion-mnist",
                    help="fashion-mnist, an idx directory, an image folder or synthetic")
    sp.add_argument("--epochs", type=values.positive_int, default=1)
    sp.add_argument("--limit-train", type=values.positive_int, default=None, metavar="K",
                    help="only the first K training images")
    sp.add_argument("--limit-eval", type=values.positive_int, default=None, metavar="K",
                    help="only the first K test images")
    sp.add_argument("--mixers", type=values.comma_list(), default=None,
                    help="comma-separated mixers (default: every mixer_bench variant)")
    sp.add_argument("--batch-size", type=values.positive_int, default=64)
    sp.add_argument("--lr", type=values.float_range(0, 10, lo_open=True), default=2e-3)
    sp.add_argument("--seed", type=int, default=0)
    options.add_threads(sp, help=None)
    sp.add_argument("--latency-batch", type=values.positive_int, default=1)
    options.add_repeats(sp, 20, help="timed runs per latency (median reported)")
    sp.add_argument("--out", type=values.output_dir, default="runs/mixer_bench",
                    help="directory for mixer_bench.md/.json/.png and the finished rows (a rerun into it resumes)")
