"""The mixer bench: every token mixer in one MetaFormer skeleton (`mixer_bench_<mixer>`: depths (2, 2, 2, 2),
widths (32, 64, 128, 256), only the mixer changes), trained with the same recipe and seed on Fashion-MNIST at
32x32, with counted parameters and MACs, latency on this machine (eager and re-parameterised deploy form), a
table and Pareto plots (accuracy vs latency and vs MACs). The same as `convscope bench-mixers`.

    PYTHONPATH=src python benchmarks/mixer_bench.py [--epochs 1 --limit-train 3000 --limit-eval 2000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, an idx directory or an image folder")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit-train", type=int, default=3000)
    p.add_argument("--limit-eval", type=int, default=2000)
    p.add_argument("--mixers", default=None, help="comma-separated mixers (default: all mixer_bench variants)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=str(RESULTS), help="directory for mixer_bench.md / .json / .png")
    args = p.parse_args(argv)

    from convscope.bench.mixers import run_mixer_bench, write_outputs

    mixers = [m for m in args.mixers.split(",") if m] if args.mixers else None
    result = run_mixer_bench(args.data, args.epochs, args.limit_train, limit_eval=args.limit_eval, mixers=mixers,
                             threads=args.threads, repeats=args.repeats)
    command = "python benchmarks/mixer_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for f in write_outputs(result, args.out, command=command.rstrip()):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
