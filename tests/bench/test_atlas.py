"""`convscope atlas`: a rerun measures nothing new, an interrupted run keeps the models it finished, a failure or a
time cap is a row, two machines merge and the report draws both (checked in headless Chromium), the query picks
the right models, bad input is one line, and the atlas times a model as `convscope profile` does."""
from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest

import convscope.bench.atlas.measure as atlas_measure
from convscope.analysis.hardware import hardware_peaks
from convscope.analysis.timing import benchmark
from convscope.bench.atlas import Settings, merge, open_db, query, read_rows, run_atlas, this_machine
from convscope.bench.atlas.db import add_machine, put_rows
from convscope.bench.atlas.report import write_atlas_report
from convscope.cli import main
from convscope.models import create_model

from ..analysis.test_report import render
from ..conftest import SRC, run_cli

TINY = ["convnext_atto", "convnextv2_atto", "inception_next_atto"]
QUICK = Settings(forms=("fp32",), batches=(1,), size=32, threads=1, repeats=3, waterline=False)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def peaks():
    return hardware_peaks("cpu", threads=1, dtypes=("fp32",), budget_s=0.3, cache=False)


def _counting(monkeypatch) -> list[str]:
    """Patch measure_model to record the model it measures; the list of names measured."""
    calls, real = [], atlas_measure.measure_model

    def counted(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(atlas_measure, "measure_model", counted)
    return calls


def _rows(db) -> list[dict]:
    con = open_db(db, create=False)
    try:
        return read_rows(con)
    finally:
        con.close()


def test_second_run_measures_nothing_new(tmp_path, monkeypatch, peaks):
    db = tmp_path / "atlas.db"
    calls = _counting(monkeypatch)
    s = Settings(forms=("fp32", "bf16"), batches=(1,), size=32, threads=1, repeats=3)
    assert run_atlas(TINY[:2], s, db, peaks=peaks, log=lambda _: None, isolate=False) == dict(measured=4, kept=0,
                                                                                                failed=0)
    assert calls == TINY[:2]
    rows = _rows(db)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    r = next(r for r in rows if r["model"] == "convnext_atto" and r["form"] == "fp32")
    assert r["params"] == sum(p.numel() for p in create_model("convnext_atto").parameters())
    assert r["macs"] > 0 and r["bytes"] > 0 and r["activations"] > 0 and r["top1"] == 75.7
    assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["n"] == 3 and 0 < r["efficiency"] < 1.5
    assert "conv" in r["groups"] and r["size"] == 32 and not r["card_size"] and r["family"] == "convnext"
    assert run_atlas(TINY[:2], s, db, peaks=peaks, log=lambda _: None, isolate=False) == dict(measured=0, kept=4,
                                                                                                failed=0)
    assert calls == TINY[:2]   # nothing measured again
    more = Settings(forms=("fp32",), batches=(1, 2), size=32, threads=1, repeats=3, waterline=False)
    assert run_atlas(["convnext_atto"], more, db, log=lambda _: None, isolate=False)["measured"] == 1   # batch 2
    assert run_atlas(["convnext_atto"], more, db, remeasure=True, log=lambda _: None, isolate=False)["measured"] == 2
    assert len(_rows(db)) == 5 and calls == TINY[:2] + ["convnext_atto"] * 2


def test_an_interrupted_run_keeps_the_models_it_finished(tmp_path, monkeypatch):
    db = tmp_path / "atlas.db"
    real = atlas_measure.measure_model

    def dies_on_the_second(name, *args, **kwargs):
        if name == TINY[1]:
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)
    monkeypatch.setattr(atlas_measure, "measure_model", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_atlas(TINY, QUICK, db, log=lambda _: None, isolate=False)
    assert {(r["model"], r["form"]) for r in _rows(db)} == {(TINY[0], "fp32")}
    monkeypatch.setattr(atlas_measure, "measure_model", real)
    calls = _counting(monkeypatch)
    assert run_atlas(TINY, QUICK, db, log=lambda _: None, isolate=False)["measured"] == 2
    assert calls == TINY[1:]
    assert len(_rows(db)) == 3


@pytest.mark.slow
def test_a_killed_run_loses_at_most_the_model_in_flight(tmp_path):
    """SIGKILL a real `convscope atlas` process once its first model's row is committed: that row stays, and the
    next run measures only the other models."""
    db = tmp_path / "atlas.db"
    args = [*TINY, "--size", "32", "--threads", "1", "--repeats", "20", "--no-waterline", "--db", str(db)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "convscope", "atlas", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not _committed(db):
            time.sleep(0.05)
        proc.kill()
    finally:
        proc.wait()
    kept = {r["model"] for r in _rows(db)}
    assert proc.returncode == -signal.SIGKILL and kept == {TINY[0]}, (proc.returncode, kept)
    out = run_cli("atlas", *args, "--repeats", "3", timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"[1/3] {TINY[0]}: all 1 row(s) in the atlas already" in out.stdout
    assert "2 row(s) measured" in out.stdout and len(_rows(db)) == 3


def _committed(db) -> int:
    """Rows committed to `db` so far (0 before the file has its tables)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM rows").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_failures_and_the_time_cap_are_rows(tmp_path, monkeypatch):
    import convscope.deploy.quantize as quantize
    import convscope.models as models

    db = tmp_path / "atlas.db"
    real = models.create_model

    def broken(name, **kwargs):
        if name == "convnextv2_atto":
            raise RuntimeError("no kernel for this op")
        return real(name, **kwargs)
    monkeypatch.setattr(models, "create_model", broken)
    monkeypatch.setattr(quantize, "available", lambda: False)
    s = Settings(forms=("fp32", "int8"), batches=(1,), size=32, threads=1, repeats=3, waterline=False)
    lines = []
    assert run_atlas(TINY[:2] + ["lsnet_t"], s, db, log=lines.append, isolate=False) == dict(measured=6, kept=0,
                                                                                              failed=5)
    rows = {(r["model"], r["form"]): r for r in _rows(db)}
    assert rows["lsnet_t", "fp32"]["status"] == "failed"   # 32 px is below its smallest input
    assert rows["lsnet_t", "fp32"]["reason"].startswith("count: ValueError: lsnet_t needs inputs of at least")
    assert rows["convnext_atto", "fp32"]["status"] == "ok"
    assert rows["convnext_atto", "int8"]["status"] == "failed"
    assert "convscope[deploy]" in rows["convnext_atto", "int8"]["reason"]
    for form in ("fp32", "int8"):
        assert rows["convnextv2_atto", form]["status"] == "failed"
        assert rows["convnextv2_atto", form]["reason"] == "build: RuntimeError: no kernel for this op"
    assert sum("failed" in line for line in lines) == 5
    capped = Settings(forms=("fp32",), batches=(1,), size=32, threads=1, repeats=3, waterline=False,
                      time_cap_s=1e-4)
    run_atlas(["inception_next_atto"], capped, db, log=lambda _: None)
    r = next(r for r in _rows(db) if r["model"] == "inception_next_atto")
    assert r["status"] == "timeout" and r["reason"] == "time cap 0.0001 s reached" and r["median_ms"] is None
    # the same cap: the timed-out model is not tried again; a larger one measures it
    assert run_atlas(["inception_next_atto"], capped, db, log=lambda _: None) == dict(measured=0, kept=1, failed=0)
    more = dataclasses.replace(capped, time_cap_s=600)
    assert run_atlas(["inception_next_atto"], more, db, log=lambda _: None) == dict(measured=1, kept=0, failed=0)
    r = next(r for r in _rows(db) if r["model"] == "inception_next_atto")
    assert r["status"] == "ok" and r["median_ms"] > 0


def _dies_on_bf16(name, s, machine, forms, peaks=None, log=print):
    """measure_model, except that a process asked for convnext_atto's bf16 form prints what glibc prints on a double
    free and aborts, as volo_d1_224's int8 build did."""
    if name == "convnext_atto" and any("bf16" in fs for fs in forms.values()):
        print("double free or corruption (out)", file=sys.stderr, flush=True)
        os.abort()
    return atlas_measure.measure_model(name, s, machine, forms, peaks, log)


def _hangs(name, s, machine, forms, peaks=None, log=print):
    """A measurement stuck where the cap's alarm cannot reach it (native code holds the thread: here, SIGALRM is
    blocked)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(120)


def test_a_model_whose_process_dies_is_a_row_not_a_crash(tmp_path, monkeypatch):
    """Each model is measured in a child process: one that aborts is retried a form per child, so its forms that
    work keep their rows and the one that dies again is a failed row naming the signal and the last words; the run
    goes on to the next model."""
    db = tmp_path / "atlas.db"
    real = atlas_measure._measure_isolated
    monkeypatch.setattr(atlas_measure, "_measure_isolated", lambda *a, **k: real(*a, **k, measure=_dies_on_bf16))
    s = dataclasses.replace(QUICK, forms=("fp32", "bf16"))
    lines = []
    assert run_atlas(TINY[:2], s, db, log=lines.append) == dict(measured=4, kept=0, failed=1)
    rows = {(r["model"], r["form"]): r for r in _rows(db)}
    died = rows["convnext_atto", "bf16"]
    assert died["status"] == "failed" and died["median_ms"] is None and died["size"] == 32 and died["top1"] == 75.7
    assert died["reason"] == "crashed: the measuring process died (SIGABRT): double free or corruption (out)"
    assert rows["convnext_atto", "fp32"]["status"] == "ok" and rows["convnext_atto", "fp32"]["median_ms"] > 0
    assert all(rows[TINY[1], f]["status"] == "ok" for f in ("fp32", "bf16"))
    assert sum("measuring again, one form per process" in line for line in lines) == 1


def test_a_hung_child_is_killed_past_the_cap(tmp_path):
    """A child still running `grace_s` after its time cap is killed and its forms are timeout rows (the cap's alarm
    alone cannot stop native code)."""
    s = dataclasses.replace(QUICK, forms=("fp32", "bf16"), time_cap_s=0.5)
    t0 = time.monotonic()
    rows = atlas_measure._measure_isolated("convnext_atto", s, "m", {1: ["fp32", "bf16"]}, None, lambda _: None,
                                           measure=_hangs, grace_s=0.5)
    assert time.monotonic() - t0 < 60
    assert [(r["form"], r["status"], r["reason"]) for r in rows] == [("fp32", "timeout", "time cap 0.5 s reached"),
                                                                      ("bf16", "timeout", "time cap 0.5 s reached")]


def _seed(db, machine_id: str, rows: list[tuple[str, str, float, float | None]], batch: int = 1) -> None:
    """Rows (model, form, median ms, top-1) of `machine_id`, at card size, 1 thread."""
    con = open_db(db)
    with con:
        add_machine(con, dict(this_machine(), id=machine_id))
    put_rows(con, [dict(machine=machine_id, model=m, family=m.split("_")[0], form=f, batch=batch, size=224,
                        width=224, threads=1, card_size=1, status="ok", reason="", form_detail="", median_ms=ms,
                        p10_ms=ms, p90_ms=ms, n=3, macs=10**9, top1=top1, created=1.0, efficiency=0.2,
                        groups=dict(conv=dict(time_s=ms / 2e3, macs=9 * 10**8, efficiency=0.3),
                                    norm=dict(time_s=ms / 2e3, macs=0, efficiency=0.1)))
                   for m, f, ms, top1 in rows])
    con.close()


def test_query_picks_the_most_accurate_models_within_the_budget(tmp_path):
    db = tmp_path / "atlas.db"
    here = this_machine()["id"]
    _seed(db, here, [("convnext_tiny", "fp32", 30.0, 82.1), ("convnext_tiny", "int8", 12.0, 82.1),
                     ("convnext_nano", "fp32", 15.0, 80.8), ("convnext_atto", "fp32", 4.0, 75.7),
                     ("convnext_femto", "fp32", 25.0, 77.5), ("lsnet_t", "fp32", 3.0, None)])
    _seed(db, "0" * 16, [("convnext_base", "fp32", 1.0, 83.8)])   # another machine
    _seed(db, here, [("convnext_small", "fp32", 5.0, 83.1)], batch=8)   # another batch
    got = query(db, 20, 1)
    assert [(r["model"], r["form"]) for r in got] == [("convnext_tiny", "int8"), ("convnext_nano", "fp32"),
                                                      ("convnext_atto", "fp32")]
    assert [r["model"] for r in query(db, 20, 1, form="fp32")] == ["convnext_nano", "convnext_atto"]
    assert [r["model"] for r in query(db, 20, 1, models=["convnext_a*"])] == ["convnext_atto"]
    assert query(db, 2.0, 1) == []


class _Fetches(HTMLParser):
    """Every src and href attribute of the page's elements (script bodies are not parsed as tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.found += [f"{tag} {k}={v}" for k, v in attrs if k in ("src", "href")]


ZOO = [("convnext_tiny", "fp32", 30.0, 82.1), ("convnext_tiny", "int8", 12.0, 82.1),
       ("convnext_nano", "fp32", 15.0, 80.8), ("convnext_atto", "fp32", 4.0, 75.7),
       ("inception_next_atto", "fp32", 5.0, 75.3), ("inception_next_atto", "bf16", 9.0, 75.3)]


@pytest.mark.slow
def test_two_machines_merge_and_the_report_draws_both(tmp_path):
    a, b, both = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "both.db"
    here = this_machine()["id"]
    _seed(a, here, ZOO + [("lsnet_t", "fp32", 2.0, None)])
    _seed(b, "f" * 16, [(m, f, 3 * ms, top1) for m, f, ms, top1 in ZOO[:4]])
    assert merge([a, b], both) == dict(machines=2, rows=11)
    rows = _rows(both)
    assert {r["machine"] for r in rows} == {here, "f" * 16}
    page = write_atlas_report(both, tmp_path / "atlas.html")
    html = page.read_text()
    assert html.count("plotly.js v") == 1 and "latency at batch 1, card size (224 px) (ms, median)" in html
    fetches = _Fetches()
    fetches.feed(html)
    assert fetches.found == []   # nothing loaded from anywhere at view time
    marks = render(page, tmp_path)
    assert marks["plots"] == 4 and marks["machines"] == 2
    for form, n in (("fp32", 4), ("int8", 1), ("bf16", 1)):   # the rows with a card top-1 (lsnet_t has none)
        in_db = sum(r["form"] == form and r["top1"] is not None and r["machine"] == here for r in rows)
        assert marks[f"points-{form.rstrip('0123456789')}"] == in_db == n
    assert marks["points-rendered"] == 6
    # the check can fail: with the first trace (fp32, convnext: 3 points) relabelled, fp32 counts 3 fewer
    short = tmp_path / "short.html"
    short.write_text(html.replace('"kind":"points"', '"kind":"gone"', 1))
    assert render(short, tmp_path)["points-fp"] == 1


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    import convscope.extras as extras

    not_db = tmp_path / "notes.db"
    not_db.write_text("hello")
    _seed(tmp_path / "ok.db", this_machine()["id"], [("convnext_atto", "fp32", 4.0, 75.7)])
    for name, fix in (("odd_row.db", "UPDATE rows SET status = 'maybe'"), ("odd_machine.db", "UPDATE machines SET "
                      "cores = 0"), ("odd_groups.db", "UPDATE rows SET groups = '[1, 2]'")):
        _seed(tmp_path / name, this_machine()["id"], [("convnext_atto", "fp32", 4.0, 75.7)])
        con = sqlite3.connect(tmp_path / name)
        con.execute(fix)
        con.commit()
        con.close()
    cases = [["atlas", "nope_model", "--db", str(tmp_path / "x.db")],
             ["atlas", "zzz*", "--db", str(tmp_path / "x.db")],
             ["atlas", "convnext_atto", "--batches", "1,x"],
             ["atlas", "convnext_atto", "--forms", "fp32,fp8"],
             ["atlas", "convnext_atto", "--size", "32x48"],
             ["atlas", "query", "--db", str(not_db), "--max-ms", "3"],
             ["atlas", "query", "--db", str(tmp_path / "none.db"), "--max-ms", "3"],
             ["atlas", "query", "--max-ms", "0"],
             ["atlas", "report", "--db", str(not_db), "--html", str(tmp_path / "r.html")],
             ["atlas", "report", "--db", str(tmp_path / "ok.db"), "--html", str(tmp_path / "r.html"),
              "--machine", "zz"],
             ["atlas", "merge", str(tmp_path / "ok.db"), str(not_db), "--out", str(tmp_path / "m.db")],
             *[["atlas", "report", "--db", str(tmp_path / f"odd_{k}.db"), "--html", str(tmp_path / "r.html")]
               for k in ("row", "machine", "groups")]]
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("convscope"), (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db", "odd_groups.db", "odd_machine.db",
                                                           "odd_row.db", "ok.db"]
    monkeypatch.setattr(extras, "available", lambda module: module != "plotly")
    assert main(["atlas", "report", "--db", str(tmp_path / "ok.db"), "--html", str(tmp_path / "r.html")]) == 2
    assert "pip install 'convscope[atlas]'" in capsys.readouterr().err


def test_the_query_command_prints_the_table(tmp_path, capsys):
    db = tmp_path / "ok.db"
    _seed(db, this_machine()["id"], [("convnext_atto", "fp32", 4.0, 75.7), ("convnext_tiny", "fp32", 30.0, 82.1)])
    assert main(["atlas", "query", "--db", str(db), "--max-ms", "20"]) == 0
    out = capsys.readouterr().out
    assert "convnext_atto" in out and "convnext_tiny" not in out


def _timed_calls(fn) -> list[tuple]:
    """What the model's timed forwards saw while `fn` ran: (input shape, dtype, memory format, training, grad
    enabled, torch threads) of every call of the whole network (a ConvNeXt, not its submodules)."""
    import torch

    from convscope.models.convnext import ConvNeXt

    seen = []

    def hook(module, args):
        if isinstance(module, ConvNeXt):
            x = args[0]
            seen.append((tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last)
                         and not x.is_contiguous(), module.training, torch.is_grad_enabled(), torch.get_num_threads()))
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return seen


def test_atlas_times_a_model_as_profile_does(tmp_path):
    """Same model, input, threads and repeats: the atlas's fp32 row times exactly the forwards that `convscope
    profile`'s timing times (same input shape, dtype, layout, eval mode, no autograd, thread count; the row holds
    its 10 timed repeats), so the two agree within the noise each reports. (Their figures side by side, on a quiet
    machine, are on the recorded atlas page; an assertion on timings would pass or fail with the machine's load.)"""
    s = Settings(forms=("fp32",), batches=(2,), size=48, threads=1, repeats=10, waterline=False)
    atlas = _timed_calls(lambda: run_atlas(["convnext_atto"], s, tmp_path / "atlas.db", log=lambda _: None,
                                           isolate=False))
    prof = _timed_calls(lambda: benchmark(create_model("convnext_atto"), (2, 3, 48, 48), threads=1, repeats=10))
    assert atlas and set(atlas) == set(prof) == {((2, 3, 48, 48), __import__("torch").float32, False, False, False, 1)}
    rows = _rows(tmp_path / "atlas.db")
    assert len(rows) == 1 and rows[0]["n"] == 10 and rows[0]["p10_ms"] <= rows[0]["median_ms"] <= rows[0]["p90_ms"]


def test_a_form_is_priced_at_its_own_peaks():
    """A bf16 or int8 row's bound is the fp32 waterline bound scaled by the form's roof over the fp32 roof
    (`waterline.form_roof`); fp32 keeps the profile's bound; a dtype without a measured peak has none."""
    from convscope.analysis.counting import count
    from convscope.analysis.hardware import HardwarePeaks
    from convscope.analysis.waterline import form_roof

    machine = dict(cpu_model="x", physical_cores=2, logical_cpus=2, threads=1, torch_version="t")
    gflops = {"fp32": 100.0, "bf16": 400.0, "int8": 800.0}
    peaks = HardwarePeaks(machine=machine, compute_gflops=gflops, bandwidth_gbs=20.0,
                          details={k: {"matmul": {"gflops": v}} for k, v in gflops.items()})
    counted = count(create_model("convnext_atto"), (1, 3, 64, 64), device="meta")
    assert atlas_measure._form_bound(0.01, counted, "fp32", peaks) == 0.01
    for dtype in ("bf16", "int8"):
        want = 0.01 * form_roof(counted, dtype, peaks) / form_roof(counted, "fp32", peaks)
        assert atlas_measure._form_bound(0.01, counted, dtype, peaks) == want and want < 0.01
    only_fp32 = HardwarePeaks(machine=machine, compute_gflops={"fp32": 100.0}, bandwidth_gbs=20.0,
                              details={"fp32": {"matmul": {"gflops": 100.0}}})
    assert atlas_measure._form_bound(0.01, counted, "int8", only_fp32) is None
    assert atlas_measure._form_bound(None, counted, "bf16", peaks) is None
