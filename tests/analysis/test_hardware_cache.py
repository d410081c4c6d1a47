"""The hardware cache under misuse: a cache directory that is a file, a cache file of the wrong shape, two
`convscope hw` at once (a lock: one measures, the other reads its result), and the record of how busy the machine
was while it was measured."""
from __future__ import annotations

import json
import threading
import time

import pytest

import convscope.analysis.hardware.peaks as hw
from convscope.cli import main


def _fake(calls: list, delay: float = 0.0):
    def measure(dev, machine, dtypes, budget_s):
        calls.append(threading.get_ident())
        time.sleep(delay)
        return hw.HardwarePeaks(machine=machine, compute_gflops={"fp32": 10.0}, bandwidth_gbs=5.0,
                                details={"fp32": {"kernel": "matmul", "matmul": {"gflops": 10.0}},
                                         "bandwidth": {"buffer_bytes": 1 << 20, "gbs": 5.0},
                                         "busy": {"other_cores_busy": 1.5}},
                                measured_at="now", duration_s=delay)
    return measure


def test_cache_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path / "f"))
    assert main(["hw", "--device", "cpu", "--dtypes", "fp32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0]


@pytest.mark.parametrize("content", ["[]", "{", '{"format": 2, "compute_gflops": "x"}', '"text"',
                                     '{"format": 2, "compute_gflops": {"fp32": -1}, "bandwidth_gbs": 1}'])
def test_cache_of_the_wrong_shape_is_measured_again(tmp_path, monkeypatch, content):
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(hw, "_measure", _fake(calls))
    key = hw._cache_key(hw.machine_info(hw.resolve_device("cpu")))
    (tmp_path / f"hardware-{key}.json").write_text(content)
    peaks = hw.hardware_peaks("cpu", dtypes=("fp32",))
    assert len(calls) == 1 and not peaks.cached and peaks.compute_gflops == {"fp32": 10.0}
    assert json.loads((tmp_path / f"hardware-{key}.json").read_text())["bandwidth_gbs"] == 5.0
    assert hw.hardware_peaks("cpu", dtypes=("fp32",)).cached


def test_concurrent_measurements_take_turns(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(hw, "_measure", _fake(calls, delay=0.5))
    results = []
    threads = [threading.Thread(target=lambda: results.append(hw.hardware_peaks("cpu", dtypes=("fp32",))))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1                               # the second waited, then read the first's result
    assert sorted(r.cached for r in results) == [False, True]


def test_busy_machine_is_recorded_and_said(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hw, "_measure", _fake([]))
    text = hw.hardware_peaks("cpu", dtypes=("fp32",)).summary()
    assert "1.50 cores busy" in text and "--refresh" in text
    busy = hw._busy_during(hw._cpu_ticks(), __import__("os").times(), 0.1)
    assert "load_average" in busy
