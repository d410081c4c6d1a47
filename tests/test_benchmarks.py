"""benchmarks/: every script is in the index (benchmarks/run.py) and in benchmarks/README.md, its result pages
exist, it answers --help at once and needs no path outside the repository; the runner; and official_parity's
start-up checks of where the official code is."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"


def _load(name: str) -> types.ModuleType:
    """benchmarks/NAME.py as a module (the runner and official_parity import only the standard library)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


RUN = _load("run")
NAMES = list(RUN.BENCHMARKS)


def _python(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_every_script_is_indexed():
    scripts = {p.stem for p in BENCH.glob("*.py")}
    unindexed = scripts - set(RUN.BENCHMARKS) - set(RUN.HELPERS)
    assert not unindexed, f"add {sorted(unindexed)} to BENCHMARKS in benchmarks/run.py"
    gone = (set(RUN.BENCHMARKS) | set(RUN.HELPERS)) - scripts
    assert not gone, f"benchmarks/run.py indexes scripts that do not exist: {sorted(gone)}"


def test_readme_table_is_current_and_names_every_file():
    text = (BENCH / "README.md").read_text()
    assert RUN.render_readme(text) == text, "benchmarks/README.md is stale: run `python benchmarks/run.py --readme`"
    for stem in [*RUN.BENCHMARKS, *RUN.HELPERS]:
        assert f"({stem}.py)" in text, f"benchmarks/README.md does not link {stem}.py"


def test_result_pages_exist_and_belong_to_their_script():
    indexed = {page: name for name, b in RUN.BENCHMARKS.items() for page in b.results}
    for page, name in indexed.items():
        path = RESULTS / page
        assert path.is_file(), f"{name}: no result page benchmarks/results/{page}"
        if path.suffix == ".md":
            assert f"benchmarks/{name}.py" in path.read_text(), f"{page} does not record a command of {name}.py"
    claimed = set(indexed) | {Path(page).parts[0] for page in indexed}   # a page in a folder claims the folder
    unindexed = {p.name for p in RESULTS.iterdir()} - claimed
    assert not unindexed, f"result files no benchmark in benchmarks/run.py claims: {sorted(unindexed)}"


def test_makefile_bench_prerequisites_follow_the_index():
    make = (ROOT / "Makefile").read_text()

    def listed(var: str) -> set[str]:
        return set(re.search(rf"^{var} := (.*)$", make, re.M).group(1).split())

    assert listed("BENCH_NEED_TEST") == {n for n, b in RUN.BENCHMARKS.items() if "pytest" in b.needs}
    assert listed("BENCH_NEED_DATA") == {n for n, b in RUN.BENCHMARKS.items() if "Fashion-MNIST" in b.needs}
    assert re.search(r"^bench: \$\(STAMP\)/install ", make, re.M)


# Directories of one machine; the Debian Fashion-MNIST directory is a system dataset (overridable by --data).
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|tmp|home|root|mnt|opt|srv|data|usr/share)/[^\s\"'`),]*|\.mirror\b")


@pytest.mark.parametrize("name", [*NAMES, *RUN.HELPERS])
def test_no_machine_specific_paths(name):
    found = [m for m in MACHINE_PATH.findall((BENCH / f"{name}.py").read_text())
             if not m.startswith("/usr/share/datasets/fashion-mnist")]
    assert not found, f"{name}.py names paths outside the repository: {found}"


@pytest.mark.parametrize("name", NAMES)
def test_help_answers_at_once(name):
    """`--help` exits 0 with the usage, and without importing torch (seconds of start-up on a small CPU)."""
    r = _python("-X", "importtime", f"benchmarks/{name}.py", "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("usage:")
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported, f"{name}.py --help imports torch: import it after parsing the arguments"


def test_runner_lists_and_dispatches():
    r = _python("benchmarks/run.py", "--list")
    assert r.returncode == 0, r.stderr
    for name, b in RUN.BENCHMARKS.items():
        assert name in r.stdout and all(f"benchmarks/results/{p}" in r.stdout for p in b.results)
    r = _python("benchmarks/run.py", "scaling_rules", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: scaling_rules.py")
    r = _python("benchmarks/run.py", "no_such_benchmark")
    assert r.returncode == 2 and "no benchmark 'no_such_benchmark'" in r.stderr


# -- official_parity: where the official code is ---------------------------------------------------------------
def test_official_parity_without_the_code_names_what_to_clone(tmp_path):
    r = _python("benchmarks/official_parity.py", "--families", "inception_next,hornet", "--official-root",
                str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 2, r.stderr
    assert "inception_next" in lines[0] and "https://github.com/sail-sg/inceptionnext" in lines[0]
    assert "hornet" in lines[1] and "https://github.com/raoyongming/HorNet" in lines[1]
    r = _python("benchmarks/official_parity.py", "--families", "convnext")  # no root at all
    assert r.returncode == 2 and "https://github.com/facebookresearch/ConvNeXt" in r.stderr
    r = _python("benchmarks/official_parity.py", "--families", "nope")
    assert r.returncode == 2 and "unknown family nope" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_official_parity_reads_a_checkout_or_a_bare_mirror(tmp_path):
    op = _load("official_parity")
    files = op.OFFICIAL["inception_next"][1]

    def git(*args: str, cwd: Path = tmp_path) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                              capture_output=True, text=True).stdout.strip()

    clones, mirrors = tmp_path / "clones", tmp_path / "mirrors"
    checkout = clones / "inceptionnext"
    (checkout / "models").mkdir(parents=True)
    (checkout / files[0]).write_text("x = 1\n")
    git("init", "-q", str(checkout))
    git("add", ".", cwd=checkout)
    git("commit", "-qm", "c", cwd=checkout)
    head = git("rev-parse", "--short", "HEAD", cwd=checkout)
    git("clone", "-q", "--bare", str(checkout), str(mirrors / "sail-sg+inceptionnext" / "repo"))

    for root, is_checkout in ((clones, True), (mirrors, False)):
        source = op.resolve_sources(["inception_next"], {}, [root])["inception_next"]
        assert source.checkout is is_checkout and source.read(files[0]) == "x = 1\n"
        assert source.commit(files) == head
    (checkout / files[0]).write_text("x = 2\n")
    assert op.find_source(checkout, files).commit(files) == f"{head}-dirty"
    plain = tmp_path / "plain"
    shutil.copytree(checkout, plain, ignore=shutil.ignore_patterns(".git"))
    assert op.resolve_sources(["inception_next"], {"inception_next": plain}, [])["inception_next"].commit(
        files) == "unversioned"


# -- demo_deploy: every step on a few images (the targets need the full run) -------------------------------------
def test_demo_deploy_smoke(tmp_path):
    """Trains a 512-image base run, quantises, prunes, fine-tunes through --init-from, times, writes the page."""
    import json

    demo = _load("demo_deploy")
    from convscope.deploy.quantize import available
    assert demo.main(["--smoke", "--threads", "1", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "p")]) == 0
    d = json.loads((tmp_path / "p.json").read_text())
    acc = d["top1"]
    assert d["n_test"] == 256 and all(0 < v <= 100 for v in acc.values())
    assert abs(acc["fp32 prepared, channels_last"] - acc["fp32"]) <= 100 * 2 / 256   # exact up to rounding
    assert abs(d["pruning"]["removed"] - 0.3) < 0.03
    assert d["pruning"]["params"][1] < 0.85 * d["pruning"]["params"][0]
    sizes = d["sizes"]
    assert sizes["pruned (safetensors)"] < 0.85 * sizes["fp32 (safetensors)"]
    if available():
        assert sizes["int8 (torch.export .pt2)"] < 0.5 * sizes["fp32 (safetensors)"]
        assert abs(d["targets"]["int8_change"] - (acc["int8 PTQ (reference, eager)"] - acc["fp32"])) < 1e-9
    assert d["finetune_config"]["epochs"] == 1 and d["finetune_config"]["init_from"].endswith("pruned.safetensors")
    for b in ("128", "1"):
        forms = d["latency"][b]
        assert forms["fp32 unpruned"]["ratio"] == 1.0 and forms["fp32 pruned + fine-tuned"]["median_ms"] > 0
    page = (tmp_path / "p.md").read_text()
    assert "benchmarks/demo_deploy.py --smoke" in page and "| (a) int8 PTQ loses <= 1 point |" in page


# -- deploy_speed: the cheap form of the final command ------------------------------------------------------------
def test_deploy_speed_smoke(tmp_path, monkeypatch, capsys):
    """A timm model and one timm lacks (ratios to convscope eager then), alternating repeats, % of roof (under
    given ceilings, so high that every roof is under any measured time), the waterline."""
    import json

    import convscope.analysis.hardware as hw

    ceilings = hw.HardwarePeaks(machine={}, compute_gflops={"fp32": 1e6, "bf16": 2e6, "int8": 4e6},
                                bandwidth_gbs=1e6, measured_at="then")
    monkeypatch.setattr(hw, "hardware_peaks", lambda *a, **k: ceilings)
    ds = _load("deploy_speed")
    out = tmp_path / "ds"
    assert ds.main(["--models", "convnext_atto,unireplknet_a", "--size", "32", "--batches", "1", "--skip",
                    "compile,int8", "--repeats", "2", "--waterline", "--clock", "thread", "--out", str(out)]) == 0
    d = json.loads(out.with_suffix(".json").read_text())
    atto, uni = d["models"]["convnext_atto"]["1"], d["models"]["unireplknet_a"]["1"]
    assert atto["ref"] == "timm eager fp32" and uni["ref"] == "convscope eager fp32"
    assert "timm has no unireplknet_a" in uni["forms"]["timm eager fp32"]["error"]
    for r in (atto, uni):
        assert r["forms"][r["ref"]]["ratio"] == 1.0
        forms = ["convscope eager fp32", "prepare", "+channels_last", "+bf16 autocast"]
        assert all(r["forms"][f]["ms"] > 0 and r["forms"][f]["repeats"] == 2 for f in forms)
        assert all(0 < v["roof_pct"] <= 100 and v["roof_pct"] == 100 * v["roof_ms"] / v["ms"]
                   for v in r["forms"].values() if "ms" in v)
        prepared = r["forms"]["prepare"]["roof_ms"]
        assert r["forms"]["+channels_last"]["roof_ms"] == prepared > r["forms"]["+bf16 autocast"]["roof_ms"]
        assert "+torch.compile" not in r["forms"] and "int8 (compiled)" not in r["forms"]
    for name in ("convnext_atto", "unireplknet_a"):
        w = d["waterline"][name]
        assert w["form"] in ds.FLOAT_FORMS and w["batch"] == 1
        assert all(row["efficiency"] < 0.25 for row in w["far_below"]) and 0 < w["far_share"] <= 1
        shares = [row["share"] for row in w["far_below"]]
        assert shares == sorted(shares, reverse=True) and w["far_count"] >= len(shares)
    page = out.with_suffix(".md").read_text()
    assert "## unireplknet_a, batch 1 (ratios to convscope eager fp32)" in page and "ISA: **" in page
    assert "| form | median ms | items/s | vs timm eager fp32 | % of roof | repeats | build s |" in page
    assert "(`convscope hw`, measured then): fp32 1000000.0 GFLOP/s, bf16 2000000.0 GFLOP/s, int8 4000000.0 GOP/s" \
        in page
    pct = d["models"]["convnext_atto"]["1"]["forms"]["prepare"]["roof_pct"]
    assert "| prepare | " in page and f"| {pct:.1f}% |" in page
    assert "### convnext_atto: " in page
    assert ds.parse(["--skip", "compile"]).skip == {"compile"}
    with pytest.raises(SystemExit):
        ds.parse(["--skip", "fp8"])
    # --reprice: every ceiling twice as high halves every roof; the timings are kept, the page says so
    doubled = hw.HardwarePeaks(machine={}, compute_gflops={k: 2 * v for k, v in ceilings.compute_gflops.items()},
                               bandwidth_gbs=2e6, measured_at="now")
    monkeypatch.setattr(hw, "hardware_peaks", lambda *a, **k: doubled)
    argv = ["--models", "convnext_atto,unireplknet_a", "--size", "32", "--batches", "1", "--skip", "compile,int8",
            "--repeats", "2", "--waterline", "--clock", "thread", "--out", str(out)]
    assert ds.main([*argv, "--reprice"]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    for name in ("convnext_atto", "unireplknet_a"):
        for label, v in d["models"][name]["1"]["forms"].items():
            w = again["models"][name]["1"]["forms"][label]
            assert w.get("ms") == v.get("ms") and w.get("ratio") == v.get("ratio")
            if "roof_ms" in v:
                assert w["roof_ms"] == pytest.approx(v["roof_ms"] / 2, rel=1e-9)
                assert w["roof_pct"] == pytest.approx(v["roof_pct"] / 2, rel=1e-9)
    assert again["peaks"]["measured_at"] == "now" and "Roofs re-priced" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    assert ds.main([*argv[:-2], "--out", str(out), "--repeats", "3", "--reprice"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert ds.main([*argv[:-2], "--out", str(tmp_path / "none"), "--reprice"]) == 2
    assert "no " in capsys.readouterr().err and not (tmp_path / "none.md").exists()


def test_deploy_speed_int8_mixed_bf16_runs_the_form_under_bf16_autocast():
    """The int8-mixed-bf16 form is the int8 runner called (first call, which compiles, included) under bf16
    autocast, its output back in fp32; the flag adds it, priced as int8."""
    import torch

    ds = _load("deploy_speed")
    seen = []

    def run(x):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return (x @ x).to(torch.bfloat16) if torch.is_autocast_enabled("cpu") else x @ x
    y = ds._under_bf16_autocast(run)(torch.eye(2))
    assert seen == [(True, torch.bfloat16)] and y.dtype == torch.float32 and torch.equal(y, torch.eye(2))
    assert not torch.is_autocast_enabled("cpu")
    assert ds.parse(["--int8-mixed-bf16"]).int8_mixed_bf16 and not ds.parse([]).int8_mixed_bf16
    assert ds.ROOF_OF["int8 mixed bf16 (compiled)"] == ds.ROOF_OF["int8 (compiled)"] == (True, "int8")


def test_deploy_speed_int8_autotune_adds_max_autotune_to_the_int8_compile_only_while_building(monkeypatch):
    """--int8-autotune's form: while it is built, the deploy path's int8 compile gets max_autotune=True beside
    freezing (switched on around each call, so the runner keeps it); outside, compile_int8 is the plain one."""
    import torch._inductor.config as cfg

    import convscope.deploy.quantize as quantize

    ds = _load("deploy_speed")
    plain = quantize.compile_int8
    seen = []
    monkeypatch.setattr(quantize.torch, "compile", lambda m, **kw: lambda x: seen.append(
        (cfg.freezing, cfg.max_autotune)) or x)
    with ds._autotuned(True):
        run = quantize.compile_int8(None)
    assert quantize.compile_int8 is plain
    run(1)
    plain(None)(1)
    with ds._autotuned(False):
        assert quantize.compile_int8 is plain
    assert seen == [(True, True), (True, False)] and not cfg.max_autotune and not cfg.freezing
    assert ds.parse(["--int8-autotune"]).int8_autotune


def test_transfer_gains_pair_each_seed_with_scratch():
    """The transfer page's second table: each pretrained arm minus scratch at the same seed (not the means' gap),
    scratch's standard deviation, and whether every seed of the arm clears every scratch seed."""
    import argparse

    tr = _load("transfer")
    top1 = {("scratch", 0): 80.0, ("scratch", 1): 82.0, ("scratch", 2): 81.0,
            ("pretrained", 0): 83.0, ("pretrained", 1): 82.5, ("pretrained", 2): 81.5,
            ("pretrained + layer decay", 1): 85.0}
    rows = [dict(per_class=20, arm=arm, seed=seed, top1=v) for (arm, seed), v in top1.items()]
    lines = tr.gains(argparse.Namespace(sizes=[20]), rows)
    # paired: +3.0, +0.5, +0.5 -> mean +1.33 > scratch's std 1.00; 81.5 is not above scratch's best 82.0
    assert "| 20 | pretrained | +1.33 (+0.50 to +3.00) | 1.00 | yes | no |" in lines
    # only seed 1 ran with layer decay: paired with scratch's seed 1 alone
    assert "| 20 | pretrained + layer decay | +3.00 (+3.00 to +3.00) | 1.00 | yes | yes |" in lines


def test_official_parity_merge_replaces_rows_in_place():
    op = _load("official_parity")
    page = "\n".join([
        "# title", "", "Command: x", "Machine: m.", "",
        "| ours | official repository | official constructor | input | max rel err |", "|---|---|---|---|---|",
        "| a_1 | o/a@1 | `a1()` | 224x224 | 1.0e-07 |", "| a_1 | o/a@1 | `a1()` | 160x288 | 2.0e-07 |",
        "| a_1 reparameterize_model | o/a@1 | `a1().r()` | 224x224 | 3.0e-07 |",
        "| b_1 | o/b@1 | `b1()` | 224x224 | 4.0e-07 |", ""])
    new = ["| a_1 | o/a@2 | `a1()` | 224x224 | 5.0e-07 |",
           "| a_1 reparameterize_model | o/a@2 | `a1().r()` | 224x224 | 6.0e-07 |",
           "| a_2 | o/a@2 | `a2()` | 224x224 | 7.0e-07 |", "| c_1 | o/c@1 | `c1()` | 224x224 | 8.0e-07 |"]
    out = op.merge_rows(page, new, ["a_1", "a_2", "c_1"], "Merged: note.").split("\n")
    assert out[:6] == ["# title", "", "Command: x", "Machine: m.", "Merged: note.", ""]
    rows = [line for line in out if line.startswith("| ") and not line.startswith("| ours")]
    assert rows == new[:3] + ["| b_1 | o/b@1 | `b1()` | 224x224 | 4.0e-07 |", new[3]]
    with pytest.raises(ValueError, match="no '| ours |' table header"):
        op.merge_rows("# nothing\n", new, ["a_1"], "n")
