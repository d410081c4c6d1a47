"""Measured ceilings of this machine: positive, consistent with their own raw timings, cached and reused."""
from __future__ import annotations

import json

import pytest
import torch

from convscope.analysis.hardware import (
    HardwarePeaks,
    cache_dir,
    hardware_peaks,
    machine_info,
    measure_conv,
    measure_copy,
    measure_int8,
    measure_matmul,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_peaks_are_plausible_and_cached(cache):
    threads = torch.get_num_threads()
    peaks = hardware_peaks("cpu", threads=1, dtypes=("fp32", "bf16"), budget_s=0.4)
    assert not peaks.cached and 0 < peaks.duration_s < 30
    fp32 = peaks.compute_gflops["fp32"]
    # one core of any machine torch runs on: more than 0.5 GFLOP/s, less than a whole GPU
    assert 0.5 < fp32 < 5000
    assert 0.1 < peaks.bandwidth_gbs < 5000
    # a matrix product reuses each byte many times: the ridge point is above 1 FLOP/byte
    assert peaks.ridge_point("fp32") > 1
    if peaks.cache_bandwidth_gbs is not None:  # a copy that stays in cache is not slower than one from DRAM
        assert peaks.cache_bandwidth_gbs > 0.5 * peaks.bandwidth_gbs
    # the ceiling is the best run of the faster probe; matrix product FLOPs = 2 n^3, 3x3 conv 2 HW C 9C
    d = peaks.details["fp32"]
    assert fp32 == max(d[k]["gflops"] for k in ("matmul", "conv3x3") if k in d) == d[d["kernel"]]["gflops"]
    for r in d["matmul"]["runs"]:
        assert r["flops"] == 2 * r["size"] ** 3
    for r in d.get("conv3x3", {"runs": []})["runs"]:
        assert r["flops"] == 2 * 56 * 56 * r["size"] * 9 * r["size"]
    for probe in ("matmul", "conv3x3"):
        runs = d.get(probe, {"runs": []})["runs"]
        for r in runs:
            assert r["gflops"] == pytest.approx(r["flops"] / r["min_s"] / 1e9)
            assert r["min_s"] <= r["median_s"] and r["median_gflops"] <= r["gflops"]
        if runs:
            assert d[probe]["gflops"] == max(r["gflops"] for r in runs)
    assert "bf16" in peaks.compute_gflops or "bf16" in peaks.details["unsupported"]
    assert peaks.peak_flops("fp32") == fp32 * 1e9

    m = peaks.machine
    assert m["threads"] == 1 and m["torch_version"] == torch.__version__ and m["cpu_model"]
    files = list(cache.glob("hardware-*.json"))
    assert len(files) == 1 and peaks.key in files[0].name
    again = hardware_peaks("cpu", threads=1, dtypes=("fp32",))
    assert again.cached and again.compute_gflops == peaks.compute_gflops and again.measured_at == peaks.measured_at

    fresh = hardware_peaks("cpu", threads=1, dtypes=("fp32",), refresh=True, budget_s=0.2)
    assert not fresh.cached and fresh.key == peaks.key
    assert torch.get_num_threads() == threads  # restored after measuring with threads=1


def test_cache_key_follows_threads_and_bad_files_are_remeasured(cache):
    one = hardware_peaks("cpu", threads=1, dtypes=("fp32",), budget_s=0.2)
    two = hardware_peaks("cpu", threads=2, dtypes=("fp32",), budget_s=0.2)
    assert one.key != two.key and len(list(cache.glob("hardware-*.json"))) == 2
    path = cache / f"hardware-{one.key}.json"
    path.write_text("{ not json")
    again = hardware_peaks("cpu", threads=1, dtypes=("fp32",), budget_s=0.2)
    assert not again.cached and json.loads(path.read_text())["compute_gflops"]


def test_json_round_trip_and_errors(cache):
    peaks = hardware_peaks("cpu", threads=1, dtypes=("fp32",), budget_s=0.2, cache=False)
    assert not list(cache.iterdir())  # cache=False writes nothing
    back = HardwarePeaks.from_dict(json.loads(peaks.to_json()))
    assert back.to_dict() == peaks.to_dict()
    with pytest.raises(ValueError, match="no fp16 compute peak"):
        peaks.peak_flops("fp16")
    with pytest.raises(ValueError, match="no int8 compute peak"):
        peaks.peak_flops("int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        peaks.peak_flops("fp64")
    with pytest.raises(ValueError, match="dtypes must be"):
        hardware_peaks("cpu", dtypes=("fp64",))
    with pytest.raises(ValueError, match="device"):
        hardware_peaks("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            hardware_peaks("cuda")
    assert cache_dir() == cache


def test_raw_measurements():
    mm = measure_matmul(torch.float32, "cpu", sizes=(64, 128), repeats=3, warmup=1, budget_s=5)
    assert [r["size"] for r in mm["runs"]] == [64, 128]
    conv = measure_conv(torch.float32, "cpu", channels=(16,), spatial=8, repeats=3, budget_s=5)
    assert conv["runs"][0]["flops"] == 2 * 8 * 8 * 16 * 9 * 16
    cp = measure_copy(1 << 20, "cpu", repeats=3)
    assert cp["buffer_bytes"] == 1 << 20
    assert cp["gbs"] == pytest.approx(2 * cp["buffer_bytes"] / cp["min_s"] / 1e9)
    assert cp["median_gbs"] <= cp["gbs"]
    info = machine_info("cpu")
    assert info["logical_cpus"] >= info["physical_cores"] >= 1


def test_int8_peak_through_the_onednn_int8_kernel_and_its_json(cache):
    q = measure_int8("cpu", sizes=(64, 128), repeats=2, warmup=1, budget_s=5)
    assert [r["size"] for r in q["runs"]] == [64, 128] and q["runs"][1]["flops"] == 2 * 128 ** 3
    assert q["gflops"] == max(r["gflops"] for r in q["runs"]) > 0
    peaks = hardware_peaks("cpu", threads=1, dtypes=("fp32", "int8"), budget_s=0.05, cache=False)
    assert peaks.compute_gflops["int8"] > 0 and peaks.details["int8"]["kernel"] == "qlinear"
    assert peaks.peak_flops("int8") == peaks.peak_flops(torch.int8) == peaks.compute_gflops["int8"] * 1e9
    assert set(peaks.isa) == {"avx512_vnni", "amx_int8", "amx_bf16", "avx512_bf16"}
    back = HardwarePeaks.from_dict(json.loads(peaks.to_json()))
    assert back.to_dict() == peaks.to_dict() and back.isa == peaks.isa
    text = peaks.summary()
    assert "GOP/s" in text and "ISA: AVX512-VNNI " in text and "AMX-BF16 " in text


def _crafted(**kw) -> HardwarePeaks:
    """Ceilings as given, on a 4-CPU machine with AVX512-VNNI and AMX (nothing measured)."""
    d = dict(machine=dict(cpu_model="x", physical_cores=4, logical_cpus=4, threads=1, torch_version="t"),
             compute_gflops={"fp32": 100.0, "bf16": 400.0, "int8": 800.0}, bandwidth_gbs=20.0,
             cache_bandwidth_gbs=80.0, isa={"avx512_vnni": True, "amx_int8": True, "amx_bf16": True,
                                             "avx512_bf16": True},
             details={"bandwidth": {"buffer_bytes": 1 << 20}, "busy": {"load_average": [1.0, 1.0, 1.0]}})
    d.update(kw)
    d["details"].update({k: {"matmul": {"gflops": v}} for k, v in d["compute_gflops"].items()})
    return HardwarePeaks(**d)


def test_implausible_ceilings_are_named_one_line_each():
    assert _crafted().implausible() == []
    assert "warning" not in _crafted().summary()
    bad = _crafted(cache_bandwidth_gbs=10.0, compute_gflops={"fp32": 100.0, "bf16": 60.0, "int8": 90.0},
                   details={"bandwidth": {"buffer_bytes": 1 << 20}, "busy": {"load_average": [6.5, 3.0, 2.0]}})
    w = bad.implausible()
    assert len(w) == 4
    assert "last-level-cache bandwidth (10.0 GB/s) is below the DRAM bandwidth (20.0 GB/s)" in w[0]
    assert "load average of 6.50 on 4 cores" in w[1]
    assert "bf16 peak 60.0 GFLOP/s is below fp32 100.0 on a CPU with AMX-BF16" in w[2]
    assert "int8 peak 90.0 GOP/s is below fp32 100.0 GFLOP/s on a CPU with AMX-INT8" in w[3]
    lines = [line for line in bad.summary().splitlines() if "warning: implausible ceiling" in line]
    assert len(lines) == 4 and all("--refresh" in line for line in lines)
    # bf16 below fp32 is no surprise without AMX-BF16, nor int8 below fp32 without VNNI / AMX-INT8
    plain = _crafted(compute_gflops={"fp32": 100.0, "bf16": 60.0, "int8": 90.0}, isa={})
    assert plain.implausible() == []
