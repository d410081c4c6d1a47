"""`convscope atlas`: the zoo measured on this machine (convscope.bench.atlas).

    convscope atlas MODELS... [--forms fp32,bf16,int8,best] [--batches 1,8] [--size card|N] [--db F]
    convscope atlas report [--db F] --html atlas.html [--machine ID] [--batch B]
    convscope atlas query [--db F] --max-ms 20 [--batch 1] [--form int8] [--measure MODELS...]
    convscope atlas merge A.db B.db --out C.db

`convscope atlas MODELS...` is `convscope atlas measure MODELS...`: a first word that is not a subcommand is a model.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..utils import text_table
from . import options, values

SUBCOMMANDS = ("measure", "report", "query", "merge")


class _MeasureByDefault(argparse._SubParsersAction):
    """Subcommands where a first word that names none of them is the first model of `measure` (argparse's check of
    the first word against the subcommands' names is off: `choices` is None once they are added)."""

    def __call__(self, parser, namespace, vals, option_string=None):
        if vals and vals[0] not in self._name_parser_map:
            vals = ["measure", *vals]
        super().__call__(parser, namespace, vals, option_string)


def _size(s: str) -> int | None:
    """'card' (None: each model's card size) or a side in pixels."""
    if s.strip().lower() == "card":
        return None
    side = values.input_size(s)
    if side[0] != side[1]:
        raise argparse.ArgumentTypeError(f"expected 'card' or one side N (square inputs); got {s!r}")
    return side[0]


def _batches(s: str) -> tuple[int, ...]:
    """Comma-separated positive batch sizes, in the order given, without repeats."""
    items = values.comma_list()(s)
    try:
        return tuple(values.positive_int(b) for b in items)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers (e.g. 1,8); got {s!r}") from None


def _settings(args: argparse.Namespace, forms: tuple[str, ...]):
    import torch

    from ..bench.atlas import Settings

    return Settings(forms=forms, batches=args.batches, size=args.size, threads=args.threads or torch.get_num_threads(),
                    repeats=args.repeats, time_cap_s=args.time_cap, waterline=not args.no_waterline)


def _db(args: argparse.Namespace) -> Path:
    from ..bench.atlas import default_path

    return args.db if args.db is not None else default_path()


def _cmd_measure(args: argparse.Namespace) -> int:
    from ..bench.atlas import resolve_models, run_atlas

    resolve_models(args.models)  # an unknown name is one line before any work
    db = _db(args)
    tally = run_atlas(args.models, _settings(args, args.forms), db, remeasure=args.remeasure)
    print(f"{db}: {tally['measured']} row(s) measured ({tally['failed']} failed or over the time cap), "
          f"{tally['kept']} already there")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..bench.atlas import write_atlas_report
    from ..bench.atlas.report import require_plotly

    require_plotly()
    db = _db(args)
    values.check_distinct({"--html": [args.html]}, {"--db": db})
    print(f"wrote {write_atlas_report(db, args.html, machine=args.machine, batch=args.batch)}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from ..bench.atlas import query, resolve_models, run_atlas
    from ..bench.atlas.measure import query_settings

    db = _db(args)
    if args.models:
        resolve_models(args.models)
    if args.measure:
        if not args.models:
            raise ValueError("--measure needs the models to measure (--models NAMES or globs)")
        args.batches = (args.batch,)
        run_atlas(args.models, query_settings(_settings(args, ("fp32",)), args.form), db)
    elif not db.is_file():
        raise ValueError(f"no atlas database at {db}; run `convscope atlas MODELS` or give --db")
    rows = query(db, args.max_ms, args.batch, form=args.form, size=args.size, threads=args.threads,
                 models=args.models)
    if not rows:
        print(f"no model measured on this machine runs within {args.max_ms:g} ms at batch {args.batch}")
        return 0
    print(text_table(("model", "family", "form", "top-1", "median ms", "p90 ms", "MACs (M)", "size", "threads"),
                     [[r["model"], r["family"], r["form"], f"{r['top1']:.1f}", f"{r['median_ms']:.2f}",
                       "-" if r["p90_ms"] is None else f"{r['p90_ms']:.2f}", f"{(r['macs'] or 0) / 1e6:.1f}",
                       r["size"], r["threads"]] for r in rows], "lllrrrrrr", rule=""))
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from ..bench.atlas import merge

    values.check_distinct({"--out": [args.out]}, {f"DB {d}": d for d in args.dbs})
    n = merge(args.dbs, args.out)
    print(f"wrote {args.out}: {n['machines']} machine(s), {n['rows']} row(s)")
    return 0


def _measure_options(sp: argparse.ArgumentParser) -> None:
    """The options measuring takes (atlas measure; atlas query --measure)."""
    sp.add_argument("--size", type=_size, default=None, metavar="card|N",
                    help="input side: each model card's (default) or N x N")
    options.add_threads(sp)
    options.add_repeats(sp, 20, help="timed rounds per form (median, p10, p90 reported)")
    sp.add_argument("--time-cap", type=values.duration, default=600.0, metavar="S",
                    help="time cap per model (540, 9m, 1h); what is left gets a timeout row (default 10m)")
    sp.add_argument("--no-waterline", action="store_true",
                    help="skip the per-layer waterline profile (no efficiency, no kind groups)")


def _db_option(sp: argparse.ArgumentParser, must_exist: bool) -> None:
    sp.add_argument("--db", type=values.input_file if must_exist else values.output_file(), default=None,
                    metavar="FILE", help="the atlas database (default: ~/.cache/convscope/atlas.db)")


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """atlas (measure, report, query, merge)."""
    from ..bench.atlas import FORMS

    top = add("atlas", None, "measure the zoo on this machine into an SQLite atlas (MODELS...), draw it (report), "
              "ask it (query), merge atlases of several machines (merge)")
    sub = top.add_subparsers(dest="atlas_command", required=True, metavar="MODELS...|report|query|merge",
                             action=_MeasureByDefault)
    sp = sub.add_parser("measure", help="measure models (the default: `convscope atlas MODELS...`)")
    sp.set_defaults(func=_cmd_measure)
    sp.add_argument("models", nargs="+", metavar="MODEL", help="model names, globs ('convnext_*') or families")
    sp.add_argument("--forms", type=values.comma_list(FORMS), default=("fp32",),
                    help=f"comma-separated forms of {','.join(FORMS)} (default fp32)")
    sp.add_argument("--batches", type=_batches, default=(1,), help="comma-separated batch sizes (default 1)")
    _measure_options(sp)
    _db_option(sp, False)
    sp.add_argument("--remeasure", action="store_true", help="measure rows the atlas already holds again")

    sp = sub.add_parser("report", help="one self-contained interactive HTML page (needs plotly)")
    sp.set_defaults(func=_cmd_report)
    _db_option(sp, True)
    sp.add_argument("--html", type=values.output_file(".html"), required=True, metavar="FILE")
    sp.add_argument("--machine", default=None, metavar="ID", help="the machine to chart (an id prefix; default "
                    "this machine when the atlas has it, else the first)")
    sp.add_argument("--batch", type=values.positive_int, default=None, help="default: the smallest measured")

    sp = sub.add_parser("query", help="the most accurate models within a latency budget on this machine")
    sp.set_defaults(func=_cmd_query)
    _db_option(sp, False)
    sp.add_argument("--max-ms", type=values.float_range(0, None, lo_open=True), required=True)
    options.add_batch(sp)
    sp.add_argument("--form", choices=FORMS, default=None, help="only this form (default: each model's fastest)")
    sp.add_argument("--models", type=values.comma_list(), default=None, help="comma-separated names, globs or "
                    "families to consider (and to measure with --measure)")
    sp.add_argument("--measure", action="store_true", help="measure the missing --models first")
    _measure_options(sp)

    sp = sub.add_parser("merge", help="merge atlases of several machines into one file")
    sp.set_defaults(func=_cmd_merge)
    sp.add_argument("dbs", nargs="+", type=values.input_file, metavar="DB")
    sp.add_argument("--out", type=values.output_file(), required=True, metavar="FILE")
    sub.choices = None
