"""The recorded atlas of this machine (`convscope atlas`): every registered variant up to a parameter cap at its
card's resolution, batch 1, fp32 and bf16; int8 and `best` (the form `convscope optimize` keeps) for the smallest
variant of each family; then the interactive page (`convscope atlas report`) and a markdown summary.

    PYTHONPATH=src python benchmarks/atlas.py [--max-params 30] [--threads 2] [--repeats 10] [--time-cap 300]
        [--smallest-forms int8,best] [--stop-after MIN] [--models GLOBS] [--out benchmarks/results/atlas]

It writes OUT/atlas.db (the database: rerun the command and it measures only what is missing), OUT/atlas.html
(the page, plotly embedded) and OUT/atlas.md (machine, command, one row per model and form). The profile check
times `--check` models with `convscope profile`'s timing beside their atlas rows, in one process, alternately.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _models(max_params: float) -> tuple[list[str], list[str]]:
    """(every variant with at most `max_params` M parameters on its card, plus the smallest variant of a family
    that has none so small; the smallest variant of each family), so that every family is in the atlas."""
    from convscope.models import list_families, list_models, model_card

    every, smallest = [], []
    for family in list_families():
        names = list_models(family=family)
        small = min(names, key=lambda n: model_card(n).params_m or 0)
        every += [n for n in names if (model_card(n).params_m or 0) <= max_params] or [small]
        smallest.append(small)
    return every, smallest


def _missing(db: Path, names: list[str], forms: tuple[str, ...], threads: int) -> list[str]:
    """The models of `names` lacking a batch-1 row at their card's size for any of `forms` on this machine."""
    from convscope.bench.atlas import open_db, read_rows, this_machine

    con = open_db(db)
    try:
        have = {(r["model"], r["form"]) for r in read_rows(con, machine=this_machine()["id"])
                if r["batch"] == 1 and r["threads"] == threads and r["card_size"]}
    finally:
        con.close()
    return [n for n in names if any((n, f) not in have for f in forms)]


def _profile_check(names: list[str], db: Path, threads: int, repeats: int) -> list[str]:
    """Atlas fp32 rows beside `convscope profile`'s timing of the same model, input and threads: three rounds,
    alternating, medians of the rounds' medians, each with its spread."""
    from convscope.analysis.timing import benchmark
    from convscope.bench.atlas import Settings, open_db, read_rows, run_atlas, this_machine
    from convscope.models import create_model, model_card

    lines = ["| model | atlas median ms (p10-p90) | profile median ms (min-p90) | ratio |", "|---|---|---|---|"]
    machine = this_machine()["id"]
    for name in names:
        size = model_card(name).input_size[-1]
        s = Settings(forms=("fp32",), batches=(1,), size=size, threads=threads, repeats=repeats, waterline=False)
        model, atlas, prof = create_model(name).eval(), [], []
        for _ in range(3):
            run_atlas([name], s, db.with_name("check.db"), remeasure=True, log=lambda _: None)
            con = open_db(db.with_name("check.db"))
            atlas += [r for r in read_rows(con, machine=machine) if r["model"] == name]
            con.close()
            prof.append(benchmark(model, (1, 3, size, size), threads=threads, repeats=repeats).points[0].latency)
        a = statistics.median(r["median_ms"] for r in atlas)
        p = statistics.median(x.median_s for x in prof) * 1e3
        lo_a, hi_a = min(r["p10_ms"] for r in atlas), max(r["p90_ms"] for r in atlas)
        lo_p, hi_p = min(x.min_s for x in prof) * 1e3, max(x.p90_s for x in prof) * 1e3
        lines.append(f"| {name} | {a:.2f} ({lo_a:.2f}-{hi_a:.2f}) | {p:.2f} ({lo_p:.2f}-{hi_p:.2f}) | {a / p:.3f} |")
    db.with_name("check.db").unlink(missing_ok=True)
    return lines


def _table(db: Path) -> list[str]:
    from convscope.bench.atlas import open_db, read_rows, this_machine

    con = open_db(db)
    rows = read_rows(con, machine=this_machine()["id"])
    con.close()
    out = ["| model | form | size | median ms (p10-p90) | GMACs | waterline eff. | top-1 | status |",
           "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["family"], r["model"], r["form"])):
        ms = "-" if r["median_ms"] is None else f"{r['median_ms']:.2f} ({r['p10_ms']:.2f}-{r['p90_ms']:.2f})"
        macs = "-" if r["macs"] is None else f"{r['macs'] / 1e9:.2f}"
        eff = "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f}%"
        top1 = "-" if r["top1"] is None else f"{r['top1']:.1f}"
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        out.append(f"| {r['model']} | {r['form']} | {r['size']} | {ms} | {macs} | {eff} | {top1} | {status} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-params", type=float, default=30.0, help="size cap: the card's parameters, in millions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--time-cap", type=float, default=300.0, help="seconds at most per model")
    ap.add_argument("--smallest-forms", default="int8,best", help="forms for each family's smallest variant")
    ap.add_argument("--models", default=None, help="only these (names, globs, families; comma-separated), for a check")
    ap.add_argument("--check", default="convnext_atto,lsnet_t", help="models timed by profile beside the atlas")
    ap.add_argument("--stop-after", type=float, default=None, metavar="MIN",
                    help="start no family's --smallest-forms rows after MIN minutes (the page names the families "
                         "not reached; a later run measures them)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "atlas")
    a = ap.parse_args()
    from common import cpu_name

    from convscope.bench.atlas import Settings, run_atlas, write_atlas_report

    a.out.mkdir(parents=True, exist_ok=True)
    db = a.out / "atlas.db"
    every, smallest = _models(a.max_params)
    if a.models:
        from convscope.bench.atlas import resolve_models

        chosen = set(resolve_models(a.models.split(",")))
        every, smallest = [n for n in every if n in chosen], [n for n in smallest if n in chosen]
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    common = dict(batches=(1,), size=None, threads=a.threads, repeats=a.repeats, time_cap_s=a.time_cap)
    tally = run_atlas(every, Settings(forms=("fp32", "bf16"), **common), db)
    extra = tuple(f for f in a.smallest_forms.split(",") if f)
    for name in smallest if extra else []:
        if a.stop_after is not None and time.perf_counter() - t0 > 60 * a.stop_after:
            break
        more = run_atlas([name], Settings(forms=extra, **common), db)
        tally = {k: tally[k] + more[k] for k in tally}
    unreached = _missing(db, smallest, extra, a.threads)
    check = _profile_check([n for n in a.check.split(",") if n], db, a.threads, a.repeats) if a.check else []
    write_atlas_report(db, a.out / "atlas.html")
    minutes = (time.perf_counter() - t0) / 60
    page = ["# The atlas of this machine", "",
            f"Machine: {cpu_name()}, {a.threads} thread(s); load average {load0[0]:.2f} at the start, "
            f"{os.getloadavg()[0]:.2f} at the end; {minutes:.0f} min ({tally['measured']} rows measured, "
            f"{tally['kept']} already in the database, {tally['failed']} failed).", "",
            f"Command: `PYTHONPATH=src python benchmarks/atlas.py {shlex.join(sys.argv[1:])}`", "",
            f"{len(every)} variants of at most {a.max_params:g} M parameters (and a family's smallest where none is so "
            f"small) at their card's resolution, batch 1, "
            f"fp32 and bf16; {', '.join(extra) or 'no other form'} for the smallest of each of {len(smallest)} "
            "families. Interactive page: [atlas.html](atlas.html); database: atlas.db (`convscope atlas report "
            "--db atlas.db`, `convscope atlas query --db atlas.db --max-ms 20`).", ""]
    if unreached:
        families = "family" if len(unreached) == 1 else "families"
        page += [f"No {', '.join(extra)} rows yet for {len(unreached)} {families}: {', '.join(unreached)} (not reached "
                 "within `--stop-after`, or the process ended while measuring them). The same command measures "
                 "them, and only them.", ""]
    if check:
        page += ["## The atlas against `convscope profile`", "",
                 "The same model, card resolution, batch 1 and threads, timed alternately three times by each in "
                 "one process: medians of the three medians, the widest spread each reported.", "", *check, ""]
    page += ["## Rows", "", *_table(db), ""]
    (a.out / "atlas.md").write_text("\n".join(page))
    print(f"wrote {a.out / 'atlas.md'}, {a.out / 'atlas.html'}, {db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
