"""Measuring the atlas: every model in every form (the deploy package's: fp32, bf16 autocast, int8 PT2E, and `best`,
what `convscope optimize` chooses) at each batch size, on this machine, into the atlas database.

Per model and batch size: the counted params, MACs, activations and bytes (`analysis.count`, meta device), the
fp32 eager model's waterline profile (`analysis.waterline.profile_layers`: the whole-model bound and the time per
operator kind), then every form built (`deploy.optimize.build_form`; its build time, and its first call as the
compile time where it compiles) and timed with `analysis.timing.measure_interleaved` (each round runs every form
once, in a rotating order) with the settings `convscope profile` uses (a first call, 2 warm-up calls, `repeats`
timed calls, at most 10 s per form), then its peak extra memory over two more calls. A row's efficiency is its form's
waterline bound (the fp32 bound scaled by `waterline.form_roof`'s roof of the form over its fp32 roof: bf16 and
int8 priced at their own peaks) over that form's median latency. Failures (a model that does not build, a form
that does not build or quantise, a missing extra) and the per-model time cap give a row saying why.

Each model is measured in a child process (forked from a server that has imported torch once, so a child starts in
milliseconds): native code that kills its process (a double free in a quantised kernel, a segfault in a compiled
one) or hangs past the time cap's reach (SIGALRM cannot interrupt native code) costs that child, not the run. A
child that dies is retried once, one form per child, so that the forms that work keep their rows; a form whose
child dies again gets a failed row naming the signal and the child's last words on stderr.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from . import db as atlas_db

FORMS = ("fp32", "bf16", "int8", "best")
WARMUP = 2          # after the first call, as `convscope profile` (analysis.timing.benchmark) does
MAX_TIME_S = 10.0   # per form, as `convscope profile`


def resolve_models(specs: Sequence[str]) -> list[str]:
    """Registered names from names, aliases, shell globs ('convnext_*') and family names, in the order given,
    without repeats; ValueError for a spec that matches nothing."""
    from ...models import list_families, list_models
    from ...models.registry import resolve_name

    names: list[str] = []
    families = set(list_families())
    for spec in specs:
        if spec in families:
            names += list_models(family=spec)
        elif any(c in spec for c in "*?["):
            found = list_models(spec)
            if not found:
                raise ValueError(f"no model matches {spec!r}; see `convscope list`")
            names += found
        else:
            names.append(resolve_name(spec))
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Settings:
    """What one atlas run measures: forms, batch sizes, input side (None: the card's), threads, timed repeats,
    the per-model time cap in seconds, and whether to take the waterline profile."""

    forms: tuple[str, ...] = ("fp32",)
    batches: tuple[int, ...] = (1,)
    size: int | None = None
    threads: int = 1
    repeats: int = 20
    time_cap_s: float = 600.0
    waterline: bool = True

    def __post_init__(self) -> None:
        unknown = [f for f in self.forms if f not in FORMS]
        if not self.forms or unknown:
            raise ValueError(f"forms must be some of {','.join(FORMS)}; got {','.join(self.forms) or 'none'}")
        if not self.batches or any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ValueError(f"batches must be positive integers; got {self.batches}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be a positive integer or the card's; got {self.size}")
        if self.threads < 1 or self.repeats < 1 or not self.time_cap_s > 0:
            raise ValueError("threads and repeats must be >= 1 and the time cap > 0 s; got "
                             f"{self.threads}, {self.repeats}, {self.time_cap_s}")


class TimeCap(BaseException):
    """The per-model time cap ran out (a BaseException, so that no `except Exception` on the way swallows it)."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise TimeCap in the block once `seconds` have passed (through SIGALRM, in the main thread of a POSIX
    process; elsewhere the cap is checked between the steps only)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def ring(signum, frame):
        raise TimeCap

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _why(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _percentile(times: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (as LatencyStats' p90)."""
    s = sorted(times)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


def _form(name: str, model: torch.nn.Module, size: tuple[int, ...], s: Settings) -> Any:
    """The deploy Form behind form name `name` ('best': the form `optimize` keeps, searched at these settings)."""
    from ...deploy.optimize import Form, optimize
    from ...deploy.quantize import EXTRA_HINT, available

    if name == "int8" and not available():
        raise ValueError(EXTRA_HINT)
    if name == "best":
        result = optimize(model, size, max_threads=s.threads, repeats=min(s.repeats, 10), log=lambda _: None)
        if not math.isfinite(result.best.median_ms):
            raise ValueError(f"optimize found no form that runs ({result.baseline.note})")
        return result.best.form
    extra = dict(compile=True, prepare=True) if name == "int8" else {}
    return Form(dtype=name, threads=s.threads, **extra)


def _counts(model: torch.nn.Module, size: tuple[int, ...], s: Settings, peaks: Any) -> dict[str, Any]:
    """Counted params, MACs, activations, bytes; with the waterline, the whole-model bound and the kind groups."""
    from ...analysis.counting import count

    counted = count(model, size, device="meta")
    t = counted.totals
    out = dict(params=counted.params, macs=t.macs, activations=t.activations, bytes=t.bytes, bound_s=None,
               groups={}, counted=counted)
    if s.waterline:
        from ...analysis.waterline import profile_layers

        prof = profile_layers(model, size, threads=s.threads, repeats=3, model_repeats=1, peaks=peaks,
                              counts=counted)
        out["bound_s"] = prof.totals["bound_s"]
        out["groups"] = {g.key: dict(time_s=g.time_s, macs=g.macs, flops=g.flops, bytes=g.bytes, bound_s=g.bound_s,
                                     layers=g.layers, efficiency=g.efficiency) for g in prof.by_kind}
    return out


def _form_bound(bound_s: float | None, counted: Any, dtype: str, peaks: Any) -> float | None:
    """The waterline bound of `form`: the fp32 profile's bound, scaled by the form's roof over the fp32 roof
    (`waterline.form_roof`: matrix products at the form dtype's peak, bytes at its width), so a bf16 or int8 row is
    priced at its own ceilings. None without the waterline or a peak for the form's dtype."""
    if bound_s is None:
        return None
    from ...analysis.waterline import form_roof

    try:
        return bound_s * form_roof(counted, dtype, peaks) / form_roof(counted, "fp32", peaks)
    except (ValueError, KeyError):   # no measured peak for this dtype
        return None


def _build(model: torch.nn.Module, form: Any, x: torch.Tensor) -> tuple[Callable, float, float]:
    """(runner, build seconds, first-call seconds) of `model` in `form`."""
    from ...deploy.optimize import build_form

    t0 = time.perf_counter()
    run, _ = build_form(model, form, x)
    t1 = time.perf_counter()
    run(x)
    return run, t1 - t0, time.perf_counter() - t1


def _time_forms(runs: dict[str, Callable], x: torch.Tensor, s: Settings, left_s: float) -> dict[str, dict]:
    """Median, p10, p90 and n of every runner, timed interleaved; then each one's peak extra memory."""
    from ...analysis.hardware import PeakMemory
    from ...analysis.timing import measure_interleaved

    seen: dict[str, list[float]] = {k: [] for k in runs}

    def timed(k: str) -> Callable[[], Any]:
        def call():
            t0 = time.perf_counter()
            runs[k](x)
            seen[k].append(time.perf_counter() - t0)
        return call

    stats = measure_interleaved({k: timed(k) for k in runs}, warmup=WARMUP, rounds=s.repeats,
                                max_time_s=min(MAX_TIME_S * len(runs), max(left_s, 0.0)))
    out = {}
    for k, st in stats.items():
        mem = PeakMemory(torch.device("cpu"))
        mem.start()
        runs[k](x)
        runs[k](x)
        peak = mem.stop()
        out[k] = dict(median_ms=st.median_s * 1e3, p10_ms=_percentile(seen[k][WARMUP:], 0.1) * 1e3,
                      p90_ms=st.p90_s * 1e3, n=st.n, peak_mib=None if peak is None else peak / 2 ** 20)
    return out


def _base_row(name: str, s: Settings, machine: str) -> dict[str, Any]:
    """What every row of model `name` at settings `s` shares (from its card; `channels`: its input channels)."""
    from ...models import model_card

    card = model_card(name)
    c, h, w = card.input_size
    if s.size is not None:
        h = w = s.size
    return dict(machine=machine, model=name, family=card.family, size=h, width=w, threads=s.threads,
                card_size=int((h, w) == tuple(card.input_size[1:])), top1=card.top1, reason="", form_detail="",
                groups={}, channels=c)


def _model_rows(name: str, s: Settings, machine: str, forms: dict[int, list[str]],
                peaks: Any) -> list[dict[str, Any]]:
    """The rows of model `name` for the (batch -> forms) still to measure, each ok, failed or timeout."""
    from ...models import create_model

    base = _base_row(name, s, machine)
    c, h, w = base.pop("channels"), base["size"], base["width"]
    timeout = atlas_db.TIMEOUT_REASON.format(s.time_cap_s)
    rows = {(b, f): dict(base, batch=b, form=f, status="timeout", reason=timeout)
            for b, fs in forms.items() for f in fs}
    start = time.perf_counter()
    try:
        with _deadline(s.time_cap_s):
            torch.manual_seed(0)
            try:
                model = create_model(name).eval()
            except Exception as e:  # noqa: BLE001 - a model that does not build is a row, not a crash
                for r in rows.values():
                    r.update(status="failed", reason=f"build: {_why(e)}")
                return list(rows.values())
            for b, fs in forms.items():
                left = s.time_cap_s - (time.perf_counter() - start)
                _batch_rows(model, (b, c, h, w), fs, s, peaks, left, {f: rows[b, f] for f in fs})
    except TimeCap:
        pass
    return list(rows.values())


def _batch_rows(model: torch.nn.Module, size: tuple[int, ...], forms: Sequence[str], s: Settings, peaks: Any,
                left_s: float, rows: dict[str, dict]) -> None:
    """Fill `rows` (form -> row) of one batch size: counts, then every form built, then all timed together."""
    from ...utils import threads_set

    with threads_set(s.threads):
        try:
            counts = _counts(model, size, s, peaks)
        except Exception as e:  # noqa: BLE001 - an input the model does not take (too small) is a row saying why
            for r in rows.values():
                r.update(status="failed", reason=f"count: {_why(e)}")
            return
        bound_s, counted = counts.pop("bound_s"), counts.pop("counted")
        x = torch.randn(*size, generator=torch.Generator().manual_seed(0))
        runs, dtypes = {}, {}
        for f in forms:
            rows[f].update(counts)
            try:
                form = _form(f, model, size, s)
                rows[f]["form_detail"], dtypes[f] = form.describe(), form.dtype
                runs[f], build_s, first_s = _build(model, form, x)
            except Exception as e:  # noqa: BLE001 - a form that fails to build or quantise is a row saying why
                rows[f].update(status="failed", reason=_why(e))
                continue
            rows[f].update(build_s=build_s, compile_s=first_s if form.compile or form.dtype == "int8" else None)
        if runs:
            timed = _time_forms(runs, x, s, left_s)
            for f, t in timed.items():
                bound = _form_bound(bound_s, counted, dtypes[f], peaks)
                rows[f].update(t, status="ok", reason="", efficiency=None if bound is None else
                               bound / (t["median_ms"] / 1e3))


def _progress(r: dict[str, Any]) -> str:
    where = f"{r['model']} {r['form']} batch {r['batch']} at {r['size']}x{r['width']}, {r['threads']} thr"
    if r["status"] != "ok":
        return f"{where}: {r['status']}: {r['reason']}"
    return f"{where}: {r['median_ms']:.2f} ms (p10 {r['p10_ms']:.2f}, p90 {r['p90_ms']:.2f}, n {r['n']})"


def measure_model(name: str, s: Settings, machine: str, forms: dict[int, list[str]], peaks: Any = None,
                  log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure model `name` for the (batch -> forms) given: its rows, stamped with the time they were made."""
    rows = _model_rows(name, s, machine, forms, peaks)
    for r in rows:
        log(_progress(r))
    now = time.time()
    return [dict(r, created=now) for r in rows]


def _todo(name: str, s: Settings, done: set[tuple], remeasure: bool) -> dict[int, list[str]]:
    """batch -> the forms of `name` not yet in the atlas (all of them with `remeasure`)."""
    from ...models import model_card

    h = s.size if s.size is not None else model_card(name).input_size[1]
    todo = {b: [f for f in s.forms if remeasure or (name, f, b, h, s.threads) not in done] for b in s.batches}
    return {b: fs for b, fs in todo.items() if fs}


GRACE_S = 60.0      # how long past its time cap a child may run before it is killed (the cap's alarm missed)


def _child(conn: Any, stderr_path: str, measure: Callable, args: tuple) -> None:
    """In the child: stderr into `stderr_path` (the parent relays it, and keeps its last line should the child
    die), the log lines and then the rows down `conn`."""
    err = os.open(stderr_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(err, 2)
    os.close(err)
    sys.stderr = open(2, "w", buffering=1, closefd=False)   # noqa: SIM115 - fd 2 lives as long as the process
    rows = measure(*args, log=lambda line: conn.send(("log", line)))
    conn.send(("rows", rows))
    conn.close()


def _signal_name(exitcode: int) -> str:
    if exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _last_words(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _in_child(measure: Callable, name: str, s: Settings, machine: str, forms: dict[int, list[str]], peaks: Any,
              log: Callable[[str], None], grace_s: float) -> tuple[list[dict[str, Any]] | None, str]:
    """Run `measure` for one model in a child process: (its rows, '') or (None, why the child died)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", __name__])   # takes effect when the server starts (once per process)
    recv, send = ctx.Pipe(duplex=False)
    fd, stderr_path = tempfile.mkstemp(prefix="convscope-atlas-", suffix=".stderr")
    os.close(fd)
    proc = ctx.Process(target=_child, args=(send, stderr_path, measure, (name, s, machine, forms, peaks)),
                       name=f"atlas {name}")
    rows, why = None, ""
    try:
        proc.start()
        send.close()
        deadline = time.monotonic() + s.time_cap_s + grace_s
        while rows is None:
            left = deadline - time.monotonic()
            if left <= 0:
                why = "timeout"
                break
            if not recv.poll(min(left, 1.0)):
                if not proc.is_alive() and not recv.poll(0):
                    break
                continue
            try:
                kind, payload = recv.recv()
            except EOFError:
                break
            if kind == "log":
                log(payload)
            else:
                rows = payload
    finally:
        if proc.pid is not None:
            if proc.is_alive() and rows is None:
                proc.kill()
            proc.join()
        send.close()   # closed already once the child started; not when it failed to start
        recv.close()
        with open(stderr_path, errors="replace") as f:
            said = f.read()
        os.unlink(stderr_path)
        if said:
            sys.stderr.write(said)
    if rows is None and why != "timeout":
        last = _last_words(said)
        why = f"the measuring process died ({_signal_name(proc.exitcode)})" + (f": {last}" if last else "")
    return rows, why


def _measure_isolated(name: str, s: Settings, machine: str, forms: dict[int, list[str]], peaks: Any,
                      log: Callable[[str], None], measure: Callable | None = None,
                      grace_s: float = GRACE_S) -> list[dict[str, Any]]:
    """The rows of model `name`, measured in a child process. A child that outlives the time cap by `grace_s` is
    killed and its rows are timeouts; one that dies is retried once with one form per child, and a form whose
    child dies again is a failed row saying how."""
    measure = measure or measure_model
    rows, why = _in_child(measure, name, s, machine, forms, peaks, log, grace_s)
    if rows is not None:
        return rows
    if why == "timeout":
        rows = [r for b, fs in forms.items() for f in fs for r in _unmeasured(name, s, machine, b, f, why)]
        for r in rows:
            log(_progress(r))
        return rows
    log(f"{name}: {why}; measuring again, one form per process")
    rows = []
    for b, fs in forms.items():
        for f in fs:
            got, why = _in_child(measure, name, s, machine, {b: [f]}, peaks, log, grace_s)
            if got is None:
                got = _unmeasured(name, s, machine, b, f, why)
                log(_progress(got[0]))
            rows += got
    return rows


def _unmeasured(name: str, s: Settings, machine: str, batch: int, form: str, why: str) -> list[dict[str, Any]]:
    """The row of a form whose child died or hung: failed (or timeout) with the reason, no counts or timings."""
    status, reason = (("timeout", atlas_db.TIMEOUT_REASON.format(s.time_cap_s)) if why == "timeout"
                      else ("failed", f"crashed: {why}"))
    row = _base_row(name, s, machine)
    del row["channels"]
    return [dict(row, batch=batch, form=form, status=status, reason=reason, created=time.time())]


def run_atlas(specs: Sequence[str], settings: Settings, db: str | os.PathLike | None = None, *,
              remeasure: bool = False, peaks: Any = None, log: Callable[[str], None] = print,
              isolate: bool = True) -> dict[str, int]:
    """Measure the models `specs` (names, globs, families) at `settings` into the atlas `db` (default
    `db.default_path()`), committing each model's rows as soon as they are measured; rows already there for this
    machine are not measured again unless `remeasure`. Each model is measured in a child process unless
    `isolate` is False (then a crash in native code ends the run). Returns {'measured': rows, 'kept': rows,
    'failed': rows}."""
    names = resolve_models(specs)
    machine = atlas_db.this_machine()
    con = atlas_db.open_db(db if db is not None else atlas_db.default_path())
    try:
        with con:
            atlas_db.add_machine(con, machine)
        if settings.waterline and peaks is None:
            from ...analysis.hardware import hardware_peaks

            dtypes = ("fp32", "bf16", "int8") if set(settings.forms) - {"fp32"} else ("fp32",)
            peaks = hardware_peaks("cpu", threads=settings.threads, dtypes=dtypes)
        return _measure_all(con, names, settings, machine["id"], remeasure, peaks, log, isolate)
    finally:
        con.close()


def _measure_all(con: sqlite3.Connection, names: Sequence[str], s: Settings, machine: str, remeasure: bool,
                 peaks: Any, log: Callable[[str], None], isolate: bool = True) -> dict[str, int]:
    done = atlas_db.existing_keys(con, machine, s.time_cap_s)
    tally = dict(measured=0, kept=0, failed=0)
    for i, name in enumerate(names, 1):
        todo = _todo(name, s, done, remeasure)
        n_all = len(s.forms) * len(s.batches)
        tally["kept"] += n_all - sum(map(len, todo.values()))
        if not todo:
            log(f"[{i}/{len(names)}] {name}: all {n_all} row(s) in the atlas already")
            continue
        rows = (_measure_isolated(name, s, machine, todo, peaks, log) if isolate
                else measure_model(name, s, machine, todo, peaks, log))
        atlas_db.put_rows(con, rows)
        tally["measured"] += len(rows)
        tally["failed"] += sum(r["status"] != "ok" for r in rows)
    return tally


def query(db: str | os.PathLike, max_ms: float, batch: int = 1, *, form: str | None = None, size: int | None = None,
          threads: int | None = None, models: Sequence[str] | None = None,
          machine: str | None = None) -> list[dict[str, Any]]:
    """The most accurate models (card top-1) that run within `max_ms` at `batch` on `machine` (default: this
    one), fastest qualifying form of each (only `form`, when given), at the card's size (or side `size`) and
    `threads` (any, when None), best first."""
    con = atlas_db.open_db(db, create=False)
    try:
        rows = atlas_db.read_rows(con, str(db), machine=machine or atlas_db.this_machine()["id"])
    finally:
        con.close()
    wanted = set(resolve_models(models)) if models else None
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if (r["status"] != "ok" or r["batch"] != batch or r["median_ms"] > max_ms or r["top1"] is None
                or (form and r["form"] != form) or (threads and r["threads"] != threads)
                or (wanted is not None and r["model"] not in wanted)
                or (r["size"] != size if size is not None else not r["card_size"])):
            continue
        if r["model"] not in best or r["median_ms"] < best[r["model"]]["median_ms"]:
            best[r["model"]] = r
    return sorted(best.values(), key=lambda r: (-r["top1"], r["median_ms"], r["model"]))


def query_settings(s: Settings, form: str | None) -> Settings:
    """The settings `query --measure` measures missing rows with: one form (the query's, else fp32)."""
    return replace(s, forms=(form or "fp32",))
