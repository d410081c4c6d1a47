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
    with pytest.raises(ValueError, match="dtype must be one of"):
        peaks.peak_flops("int8")
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
