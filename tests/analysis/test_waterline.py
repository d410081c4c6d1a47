"""Per-layer waterline analysis: time attribution, the join with count(), bounds, groups and JSON."""
from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import convscope
from convscope.analysis.counting import OpRecord, count
from convscope.analysis.hardware import HardwarePeaks, hardware_peaks
from convscope.analysis.waterline import (
    LayerProfile,
    compare_models,
    form_roof,
    kernel_bound,
    layer_kind,
    profile_layers,
    waterline_bound,
)
from convscope.analysis.waterline.profiler import _Scopes, _self_times


@pytest.fixture(scope="module")
def peaks():
    return hardware_peaks("cpu", threads=1, dtypes=("fp32",), budget_s=0.5, cache=False)


class Residual(nn.Module):
    """x + f(x): the add is the container's own work (glue)."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, x):
        return x + self.f(x)


class Toy(nn.Module):
    """A heavy 3x3 conv, a light depthwise conv, a pointwise Linear on channels-last tokens, a module called
    twice, a residual container, and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.heavy = nn.Conv2d(64, 64, 3, padding=1)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.act = nn.GELU()
        self.block = Residual(nn.Conv2d(64, 64, 1))
        self.pw = nn.Linear(64, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.act(self.heavy(x))
        x = self.act(self.dw(x))
        x = self.block(x)
        x = self.pw(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(x.mean((2, 3)))


def test_layer_kinds():
    assert layer_kind(nn.Conv2d(8, 8, 7, groups=8)) == "depthwise conv"
    assert layer_kind(nn.Conv2d(8, 16, 1)) == "pointwise conv"
    assert layer_kind(nn.Conv2d(8, 16, 3, groups=2)) == "grouped conv"
    assert layer_kind(nn.Conv2d(8, 16, 3)) == "conv"
    assert layer_kind(nn.Linear(8, 8), (2, 7, 7, 8)) == "pointwise conv"
    assert layer_kind(nn.Linear(8, 8), (2, 8)) == "linear"
    assert layer_kind(nn.LayerNorm(8)) == "norm" and layer_kind(nn.BatchNorm2d(8)) == "norm"
    assert layer_kind(nn.GELU()) == "activation" and layer_kind(nn.ReLU()) == "activation"
    assert layer_kind(nn.AdaptiveAvgPool2d(1)) == "pool" and layer_kind(nn.Identity()) == "identity"
    assert layer_kind(Residual(nn.Identity()), leaf=False) == "glue"


def test_kernel_bound_is_a_sum_of_maxima():
    recs = [OpRecord("a", "m", "T", flops=1000, bytes_read=10, bytes_written=10),   # compute: 10 s vs 0.2 s
            OpRecord("b", "m", "T", elementwise_flops=100, bytes_read=400, bytes_written=100)]  # memory: 5 s
    bound, comp, mem = kernel_bound(recs, peak_flops=100.0, bandwidth=100.0)
    assert (comp, mem) == pytest.approx((11.0, 5.2))
    assert bound == pytest.approx(10.0 + 5.0)


@pytest.mark.parametrize("form, compute_s, memory_s", [
    # 1x1 conv 8 -> 16 with bias on a 2x8x4x4 input: 2 * 2*16*16*8 = 8192 FLOPs of product, 2*16*16 = 512 of bias
    # add; bytes at fp32: input 1024 + weight 512 + bias 64 read, output 2048 written = 3648
    ("fp32", 8192 / 100e9 + 512 / 100e9, 3648 / 10e9),
    ("bf16", 8192 / 400e9 + 512 / 100e9, 3648 / 2 / 10e9),
    ("int8", 8192 / 1600e9 + 512 / 100e9, 3648 / 4 / 10e9),
])
def test_form_roof_prices_a_layer_at_its_dtype(form, compute_s, memory_s):
    conv, size = nn.Conv2d(8, 16, 1), (2, 8, 4, 4)
    gflops = {"fp32": 100.0, "bf16": 400.0, "int8": 1600.0}
    for scale, want in ((1, max(compute_s, memory_s)), (1e9, compute_s)):  # then bandwidth without limit
        peaks = HardwarePeaks(machine={}, compute_gflops=gflops, bandwidth_gbs=10.0 * scale)
        assert form_roof(conv, form, peaks, size) == pytest.approx(want, rel=1e-12)
    peaks = HardwarePeaks(machine={}, compute_gflops={k: v * 1e9 for k, v in gflops.items()}, bandwidth_gbs=10.0)
    assert form_roof(count(conv, size), type("Form", (), {"dtype": form})(), peaks) == pytest.approx(
        memory_s, rel=1e-9)  # counts, a Form-like object, compute without limit


def test_form_roof_sums_layers_and_refuses_what_it_cannot_price():
    peaks = HardwarePeaks(machine={}, compute_gflops={"fp32": 100.0}, bandwidth_gbs=10.0)
    two = nn.Sequential(nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 1))
    one = [form_roof(m, "fp32", peaks, (2, c, 4, 4)) for m, c in ((two[0], 8), (two[1], 16))]
    assert form_roof(two, "fp32", peaks, (2, 8, 4, 4)) == pytest.approx(sum(one), rel=1e-12)
    with pytest.raises(ValueError, match="no int8 compute peak"):
        form_roof(two, "int8", peaks, (2, 8, 4, 4))
    with pytest.raises(ValueError, match="needs its input_size"):
        form_roof(two, "fp32", peaks)
    with pytest.raises(ValueError, match="counts made in float32"):
        form_roof(count(two, (2, 8, 4, 4), dtype=torch.bfloat16), "fp32", peaks)


def test_self_times_add_up_in_every_pass():
    torch.manual_seed(0)
    model = Toy().eval()
    scopes = _Scopes(model)
    x = torch.randn(2, 64, 24, 24)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            model(x)
    scopes.remove()
    passes = _self_times(prof.events(), "cpu")
    assert len(passes) == 5
    # the heavy conv (9x the MACs of any other layer, 64x the depthwise conv's) gets the most time
    median = {k: statistics.median(p[k] for p in passes) for k in ("heavy", "dw", "pw", "block.f")}
    assert max(median, key=median.get) == "heavy"
    for p in passes:
        times = {k: v for k, v in p.items() if not k.startswith("__")}
        assert set(times) == {"<model>", "heavy", "dw", "act", "block", "block.f", "pw", "fc"}
        assert sum(times.values()) == pytest.approx(p["__total__"], rel=1e-9)
        assert all(v >= 0 for v in times.values())
        assert p["__calls__act"] == 2 and p["__calls__heavy"] == 1
    # hooks are gone once removed: a forward records no scopes
    with profile(activities=[ProfilerActivity.CPU]) as prof2, torch.inference_mode():
        model(x)
    assert not _self_times(prof2.events(), "cpu")


def test_profile_joins_counts_and_times(peaks):
    """On the thread clock, so that other processes on a busy test machine do not move the times."""
    torch.manual_seed(0)
    model = Toy().eval()
    size = (2, 64, 32, 32)
    prof = profile_layers(model, size, repeats=5, threads=1, peaks=peaks, clock="thread")
    counts = count(model, size)
    rows = {r.name: r for r in prof.layers}
    assert set(rows) == {"<model>", "heavy", "dw", "act", "block", "block.f", "pw", "fc"}
    assert not prof.unmatched and not prof.uncounted
    # counts joined by module name: MACs from the closed form, glue carries the container's add
    assert rows["heavy"].macs == 2 * 32 * 32 * 64 * 64 * 9 == counts.by_module["heavy"].macs
    assert rows["dw"].macs == 2 * 32 * 32 * 64 * 9
    assert rows["block"].kind == "glue" and not rows["block"].leaf and rows["block"].flops == 2 * 64 * 32 * 32
    assert rows["pw"].kind == "pointwise conv" and rows["fc"].kind == "linear" and rows["dw"].kind == "depthwise conv"
    assert rows["act"].calls == 2
    # time attribution: the heavy conv (9x the MACs of every other layer) is the slowest layer
    leaves = [r for r in prof.layers if r.leaf]
    assert max(leaves, key=lambda r: r.time_s).name == "heavy"
    # the accounting identities the report prints
    t = prof.totals
    assert t["leaf_s"] + t["glue_s"] == pytest.approx(t["profiled_s"])
    assert t["leaf_s"] + t["gap_s"] == pytest.approx(t["model_s"])
    assert t["profiled_s"] + t["unattributed_s"] == pytest.approx(t["model_s"])
    assert sum(r.time_s for r in leaves) == pytest.approx(t["leaf_s"])
    # layers account for the forward up to hook/profiler overhead and noise: within a factor of 2
    assert 0.5 < t["profiled_s"] / t["model_s"] < 2
    assert t["flops"] == counts.totals.flops + counts.totals.elementwise_flops
    # waterline: a sum of per-kernel maxima is at least the max of the sums
    assert t["bound_s"] >= t["roofline_bound_s"] * (1 - 1e-12)
    assert t["bound_s"] == pytest.approx(waterline_bound(counts, peaks))
    assert t["efficiency"] == pytest.approx(t["bound_s"] / t["model_s"])
    for r in prof.layers:
        # per kernel max(c, m): at least the larger sum, at most both sums
        assert max(r.compute_s, r.memory_s) * (1 - 1e-12) <= r.bound_s <= (r.compute_s + r.memory_s) * (1 + 1e-12)
        if r.physical and r.bound_s > 0:  # nothing runs faster than a physical ceiling (5% for noise)
            assert r.efficiency <= 1.05, r
    assert rows["heavy"].limiter == "compute" and rows["heavy"].physical
    assert prof.clock == "thread" and "thread CPU time" in prof.describe()
    assert LayerProfile.from_dict(prof.to_dict()).clock == "thread"
    # the caller's model is left as it was
    assert model.heavy.weight.dtype == torch.float32 and not model.heavy._forward_hooks


def test_memory_bound_layer_is_physical_and_below_its_bound(peaks):
    """An activation over a working set larger than the last-level cache must stream from DRAM."""
    llc = peaks.llc_bytes or (32 << 20)
    elems = llc // 2  # read + write: 4x the cache
    model = nn.Sequential(nn.ReLU())
    prof = profile_layers(model, (1, 1, 1, elems), repeats=3, threads=1, peaks=peaks)
    relu = prof.layer("0")
    assert relu.limiter == "memory" and relu.physical and relu.bytes == 2 * 4 * elems
    assert 0 < relu.efficiency <= 1.05


def test_convnext_groups_and_json(peaks, tmp_path):
    model = convscope.create_model("convnext_atto")
    prof = profile_layers(model, (1, 3, 64, 64), repeats=2, threads=1, peaks=peaks)
    kinds = {g.key: g for g in prof.by_kind}
    # ConvNeXt-atto: 12 blocks, each a 7x7 depthwise conv and two 1x1-conv MLP layers
    assert kinds["depthwise conv"].layers == 12 and kinds["pointwise conv"].layers == 24
    assert sum(g.time_s for g in prof.by_kind) == pytest.approx(prof.totals["profiled_s"])
    assert sum(g.share for g in prof.by_type) == pytest.approx(1.0)
    assert "Conv2d" in {g.key for g in prof.by_type}
    assert "depthwise conv" in prof.group_table("kind") and "stages.0.blocks.0.conv_dw" in prof.table(top=200)
    back = LayerProfile.from_json(prof.to_json(tmp_path / "p.json") and tmp_path / "p.json")
    assert back.to_dict() == prof.to_dict()
    with pytest.raises(ValueError, match="no layer named"):
        prof.layer("nope")
    with pytest.raises(ValueError, match="group"):
        prof.group("op")


def test_compare_models(peaks):
    cmp = compare_models(["convnext_atto", "poolformerv2_s12"], (1, 3, 64, 64), repeats=3, threads=1, peaks=peaks)
    rows = {r.name: r for r in cmp.rows}
    assert rows["convnext_atto"].params == pytest.approx(3.70e6, rel=0.005)
    assert rows["convnext_atto"].top1 == 75.7
    for r in cmp.rows:
        assert r.computational_efficiency == pytest.approx(r.flops / (r.latency_s * peaks.peak_flops("fp32")))
        assert r.efficiency == pytest.approx(r.bound_s / r.latency_s)
        assert r.latency.min_s <= r.latency_s <= r.latency.max_s
    assert "convnext_atto" in cmp.table()
    with pytest.raises(ValueError, match="at least one"):
        compare_models([])


def test_thread_clock_passes_add_up(peaks):
    """The thread clock (CPU time of the calling thread) attributes the same way as the profiler scopes."""
    torch.manual_seed(0)
    model = Toy().eval()
    x = torch.randn(2, 64, 32, 32)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scopes = _Scopes(model, "thread")
        scopes.recording = True
        with torch.inference_mode():
            model(x)
            model(x)
        scopes.remove()
    finally:
        torch.set_num_threads(old)
    assert len(scopes.passes) == 2
    for p in scopes.passes:
        times = {k: v for k, v in p.items() if not k.startswith("__")}
        assert set(times) == {"<model>", "heavy", "dw", "act", "block", "block.f", "pw", "fc"}
        assert sum(times.values()) == pytest.approx(p["__total__"], rel=1e-9)
        assert p["__calls__act"] == 2

    with pytest.raises(ValueError, match="clock='thread'"):
        profile_layers(model, (1, 64, 8, 8), threads=2, peaks=peaks, clock="thread")
    with pytest.raises(ValueError, match="clock must be"):
        profile_layers(model, (1, 64, 8, 8), threads=1, peaks=peaks, clock="cpu")
