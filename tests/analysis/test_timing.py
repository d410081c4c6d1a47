"""Latency statistics, throughput, peak memory and JSON of `benchmark()`, on tiny models."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from convscope.analysis.timing import BenchmarkResult, LatencyStats, benchmark, measure, measure_interleaved


def _net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def test_latency_stats():
    s = LatencyStats.from_times([float(t) for t in range(10, 0, -1)])
    assert (s.median_s, s.min_s, s.max_s, s.mean_s, s.n) == (5.5, 1.0, 10.0, 5.5, 10)
    assert s.p90_s == pytest.approx(9.1)  # linear interpolation, as numpy.percentile
    assert LatencyStats.from_times([2.0]).p90_s == 2.0
    with pytest.raises(ValueError):
        LatencyStats.from_times([])


def test_measure_stops_at_the_time_budget():
    calls = []
    stats = measure(lambda: calls.append(1) or sum(range(20000)), warmup=2, repeats=10_000, max_time_s=0.05)
    assert 3 <= stats.n < 10_000 and len(calls) == stats.n + 2


def test_interleaved_rounds_rotate_and_rank():
    order: list[str] = []

    def work(name: str, seconds: float):
        def fn():
            order.append(name)
            time.sleep(seconds)
        return fn

    stats = measure_interleaved({"slow": work("slow", 0.004), "fast": work("fast", 0.0), "mid": work("mid", 0.002)},
                                warmup=1, rounds=6)
    assert list(stats) == ["slow", "fast", "mid"]
    assert [s.n for s in stats.values()] == [6, 6, 6]
    timed = order[3:]   # after one warm-up call each
    rounds = [timed[i:i + 3] for i in range(0, 18, 3)]
    assert [r[0] for r in rounds] == ["slow", "fast", "mid", "slow", "fast", "mid"]   # each leads in turn
    assert all(sorted(r) == ["fast", "mid", "slow"] for r in rounds)
    assert stats["fast"].median_s < stats["mid"].median_s < stats["slow"].median_s
    assert stats["slow"].median_s >= 0.004
    with pytest.raises(ValueError, match="at least one"):
        measure_interleaved({})
    with pytest.raises(ValueError, match="rounds must be"):
        measure_interleaved({"a": lambda: None}, rounds=0)


def test_thread_clock_leaves_out_waiting():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wall = measure(lambda: time.sleep(0.02), warmup=0, repeats=3)
        cpu = measure(lambda: time.sleep(0.02), warmup=0, repeats=3, clock="thread")
        torch.set_num_threads(2)
        with pytest.raises(ValueError, match="one thread"):
            measure(lambda: None, clock="thread")
    finally:
        torch.set_num_threads(old)
    assert wall.min_s >= 0.02 and cpu.max_s < 0.01
    with pytest.raises(ValueError, match="clock must be"):
        measure(lambda: None, clock="cpu")


def test_inference_over_batch_sizes_and_json():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    res = benchmark(model, (3, 32, 32), batch_sizes=(1, 32), repeats=5, threads=1)
    assert [p.batch for p in res.points] == [1, 32]
    for p in res.points:
        lat = p.latency
        assert 0 < lat.min_s <= lat.median_s <= lat.p90_s <= lat.max_s and lat.n == 5
        assert p.throughput == pytest.approx(p.batch / lat.median_s)
        assert p.compile_s is None
    # the largest activation (32 x 64 x 32 x 32 fp32) has to be resident during a batch-32 step
    big, small = res.point(32).peak_memory_bytes, res.point(1).peak_memory_bytes
    assert big >= 32 * 64 * 32 * 32 * 4 and big > small
    assert res.mode == "inference" and res.threads == 1 and res.machine["threads"] == 1
    assert res.machine["cpu_model"] and res.machine["torch_version"] == torch.__version__
    assert "VmHWM" in res.memory_method
    back = BenchmarkResult.from_json(res.to_json())
    assert back == res
    # the caller's model is untouched: same weights, still in train mode
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="batch 4 was not measured"):
        res.point(4)


def test_training_step_bf16_channels_last(tmp_path):
    model = _net()
    before = [p.clone() for p in model.parameters()]
    res = benchmark(model, (4, 3, 32, 32), mode="train", dtype="bf16", channels_last=True, repeats=3, warmup=1,
                    threads=1, optimizer="adamw")
    assert res.points[0].batch == 4 and res.dtype == "bf16" and res.channels_last and res.mode == "train"
    assert res.settings["optimizer"] == "adamw"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))
    path = tmp_path / "bench.json"
    res.to_json(path)
    assert BenchmarkResult.from_json(path) == res
    assert "train" in res.describe() and "bf16 autocast" in res.describe()


@pytest.mark.slow
def test_compile_time_is_excluded():
    torch._dynamo.reset()
    res = benchmark(_net(), (3, 16, 16), batch_sizes=(2,), compile=True, repeats=5, threads=1)
    p = res.points[0]
    assert res.compile and p.compile_s is not None
    # compiling takes far longer than a compiled step, and no timed run includes it
    assert p.compile_s > 5 * p.latency.max_s
    assert "compile" in res.table()


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="eval"), "mode must be one of"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(batch_sizes=(0,)), "batch sizes must be positive"),
    (dict(threads=0), "threads must be >= 1"),
    (dict(optimizer="lion", mode="train"), "optimizer must be"),
    (dict(input_size=(32, 32)), "input_size must be"),
])
def test_bad_arguments(kwargs, match):
    kwargs = dict(dict(input_size=(3, 8, 8), repeats=1), **kwargs)
    with pytest.raises(ValueError, match=match):
        benchmark(_net(), **kwargs)
