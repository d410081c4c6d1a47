"""Per-layer waterline analysis: measured time of every module joined with its exact counts.

Lavin et al. ("On the Efficiency of Convolutional Neural Networks", 2024) write latency = operations /
(efficiency x peak) and bound a sequence of kernels by its waterline: each kernel needs at least
max(FLOPs / peak compute, bytes / peak bandwidth). Here every aten operator `count()` records is one kernel;
a layer's bound is the sum of its kernels' bounds, and its efficiency is bound / measured time (1 = running at
the machine's ceiling; a layer that takes 10x its bound has efficiency 0.1).

Timing: a `torch.profiler` scope (`record_function`) wraps the forward of every module, entered by a forward
pre-hook and closed by a forward hook. A module's time is its scope's time minus its child modules' scopes
(self time), so in every profiled pass the rows add up exactly to the whole forward: leaf modules are the
layers, and a container's self time is its glue (residual adds, permutes, layer scale in the container's own
`forward`). Each row's time is its median over the profiled passes. The whole model is also timed without hooks
or profiler, and `totals` accounts for it: forward = leaf layers + container glue + unattributed, where
`unattributed_s` is negative when hooks and profiler inflate the layers, and `gap_s` = forward - leaf layers is
the time no layer accounts for.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from ..files import JsonRecord
from .counting import CountResult, OpRecord, count
from .hardware import (DTYPES, HardwarePeaks, dtype_name, hardware_peaks, machine_info, resolve_device,
                       set_threads)
from .timing import LatencyStats, _resolve_model, benchmark, check_clock, measure, split_input_size

SCOPE = "convscope::"
ROOT = "<model>"

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
          nn.modules.pooling._AdaptiveMaxPoolNd)
_NO_WORK = (nn.Identity, nn.Dropout, nn.Flatten)


def layer_kind(module: nn.Module, input_shape: Sequence[int] | None = None, leaf: bool = True) -> str:
    """What a module computes, for grouping: 'depthwise conv', 'pointwise conv' (1x1 conv, or a Linear applied
    at every position of a map or sequence), 'grouped conv', 'conv', 'linear', 'norm', 'activation', 'pool',
    'identity', 'glue' (a container's own forward), or the class name."""
    if not leaf:
        return "glue"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise conv"
        if module.groups > 1:
            return "grouped conv"
        if all(k == 1 for k in module.kernel_size):
            return "pointwise conv"
        return "conv"
    if isinstance(module, nn.Linear):
        positions = 1
        for s in (input_shape or ())[1:-1]:
            positions *= s
        return "pointwise conv" if input_shape is not None and len(input_shape) >= 3 and positions > 1 else "linear"
    if isinstance(module, _NORMS) or "norm" in type(module).__name__.lower():
        return "norm"
    if module.__class__.__module__ == "torch.nn.modules.activation" or type(module).__name__.endswith(("ReLU", "LU")):
        return "activation"
    if isinstance(module, _POOLS) or "pool" in type(module).__name__.lower():
        return "pool"
    if isinstance(module, _NO_WORK):
        return "identity"
    return type(module).__name__


def kernel_bound(records: Iterable[OpRecord], peak_flops: float, bandwidth: float) -> tuple[float, float, float]:
    """(waterline bound, compute part, memory part) in seconds for a sequence of kernels (aten calls):
    sum over kernels of max(FLOPs / peak, bytes / bandwidth); FLOPs include element-wise work."""
    bound = comp = mem = 0.0
    for r in records:
        c = (r.flops + r.elementwise_flops) / peak_flops
        m = (r.bytes_read + r.bytes_written) / bandwidth
        bound += max(c, m)
        comp += c
        mem += m
    return bound, comp, mem


def waterline_bound(counts: CountResult, peaks: HardwarePeaks, dtype: str | torch.dtype = "fp32") -> float:
    """Lower bound on the model's latency on this machine: the waterline of all its counted kernels."""
    return kernel_bound(counts.records, peaks.peak_flops(dtype), peaks.bandwidth)[0]


# -- results ------------------------------------------------------------------------------------------------------
class _Rates:
    """What a layer (or a group of layers) attains, from its `flops`, `bytes`, measured `time_s` and `bound_s`."""

    flops: int
    bytes: int
    time_s: float
    bound_s: float

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP/byte."""
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def attained_flops(self) -> float:
        """FLOP/s reached."""
        return self.flops / self.time_s if self.time_s > 0 else 0.0

    @property
    def efficiency(self) -> float:
        """Waterline bound / measured time."""
        return self.bound_s / self.time_s if self.time_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), intensity=self.intensity, attained_flops=self.attained_flops,
                    efficiency=self.efficiency)


@dataclass
class LayerRow(_Rates):
    """One module: measured self time per forward (median over repeats) joined with its counts.

    `flops` includes element-wise work (2 x MACs + element-wise FLOPs). `bound_s` is the waterline of the
    module's kernels; `limiter` says which ceiling dominates it. `physical` is False for a memory-bound layer
    whose traffic is less than twice the last-level cache: much of it can hit in cache, so such a layer can
    beat the DRAM bound (efficiency > 1).
    """

    name: str
    type: str
    kind: str
    leaf: bool
    calls: int
    time_s: float
    macs: int
    flops: int
    bytes: int
    activations: int
    compute_s: float
    memory_s: float
    bound_s: float
    limiter: str
    physical: bool


@dataclass
class GroupRow(_Rates):
    """Layers summed by kind or module type: efficiency = total bound / total time."""

    key: str
    layers: int
    time_s: float
    macs: int
    flops: int
    bytes: int
    bound_s: float
    share: float


def _group(rows: Sequence[LayerRow], key, total_s: float) -> list[GroupRow]:
    groups: dict[str, GroupRow] = {}
    for r in rows:
        g = groups.setdefault(key(r), GroupRow(key(r), 0, 0.0, 0, 0, 0, 0.0, 0.0))
        g.layers += 1
        g.time_s += r.time_s
        g.macs += r.macs
        g.flops += r.flops
        g.bytes += r.bytes
        g.bound_s += r.bound_s
    for g in groups.values():
        g.share = g.time_s / total_s if total_s > 0 else 0.0
    return sorted(groups.values(), key=lambda g: g.time_s, reverse=True)


@dataclass
class LayerProfile(JsonRecord):
    """Per-layer waterline analysis of one model at one input size on this machine.

    `totals` (seconds unless named otherwise): model_s (median forward without hooks or profiler), leaf_s
    (sum of leaf layers), glue_s (containers' own forward), profiled_s (leaf_s + glue_s: one typical profiled
    pass), profiled_median_s (median of the profiled passes' totals), unattributed_s (model_s - profiled_s;
    negative when hooks and profiler inflate the layers), gap_s (model_s - leaf_s: forward time no layer
    accounts for), flops (2 x MACs + element-wise), bytes, macs, bound_s (waterline of all kernels), efficiency
    (bound_s / model_s), computational_efficiency (flops / (model_s x peak): Lavin's latency formula solved
    for efficiency), roofline_bound_s (max(flops / peak, bytes / bandwidth) of the whole model).
    """

    model: str
    input_size: tuple[int, int, int, int]
    dtype: str
    channels_last: bool
    threads: int
    device: str
    machine: dict[str, Any]
    peaks: dict[str, Any]
    layers: list[LayerRow]
    totals: dict[str, float]
    repeats: int
    uncounted: dict[str, int] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    clock: str = "wall"

    @property
    def by_kind(self) -> list[GroupRow]:
        return _group(self.layers, lambda r: r.kind, self.totals["profiled_s"])

    @property
    def by_type(self) -> list[GroupRow]:
        return _group(self.layers, lambda r: r.type if r.leaf else f"{r.type} (glue)", self.totals["profiled_s"])

    def group(self, by: str = "kind") -> list[GroupRow]:
        if by not in ("kind", "type"):
            raise ValueError(f"group(by=...) expects 'kind' or 'type'; got {by!r}")
        return self.by_kind if by == "kind" else self.by_type

    def layer(self, name: str) -> LayerRow:
        for r in self.layers:
            if r.name == name:
                return r
        raise ValueError(f"no layer named {name!r} in the profile of {self.model}")

    @property
    def peak_flops(self) -> float:
        return self.peaks["compute_gflops"][self.dtype] * 1e9

    @property
    def bandwidth(self) -> float:
        return self.peaks["bandwidth_gbs"] * 1e9

    # -- serialisation -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dict(model=self.model, input_size=list(self.input_size), dtype=self.dtype,
                    channels_last=self.channels_last, threads=self.threads, device=self.device,
                    machine=self.machine, peaks=self.peaks, totals=self.totals, repeats=self.repeats,
                    uncounted=self.uncounted, unmatched=self.unmatched, clock=self.clock,
                    layers=[r.to_dict() for r in self.layers],
                    by_kind=[g.to_dict() for g in self.by_kind], by_type=[g.to_dict() for g in self.by_type])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerProfile":
        row_fields = set(LayerRow.__dataclass_fields__)
        return cls(model=d["model"], input_size=tuple(d["input_size"]), dtype=d["dtype"],
                   channels_last=d["channels_last"], threads=d["threads"], device=d["device"],
                   machine=d["machine"], peaks=d["peaks"], totals=d["totals"], repeats=d["repeats"],
                   uncounted=d.get("uncounted", {}), unmatched=d.get("unmatched", []), clock=d.get("clock", "wall"),
                   layers=[LayerRow(**{k: v for k, v in r.items() if k in row_fields}) for r in d["layers"]])

    # -- text --------------------------------------------------------------------------------------------------
    def describe(self) -> str:
        b, c, h, w = self.input_size
        return (f"{self.model} batch {b} {c}x{h}x{w} {self.dtype}{' channels_last' if self.channels_last else ''}, "
                f"{self.threads} threads, {self.device}" + (", thread CPU time" if self.clock == "thread" else ""))

    def summary(self) -> str:
        t = self.totals
        ms = 1e3
        return "\n".join([
            self.describe(),
            f"  forward {t['model_s'] * ms:.2f} ms (median, no profiler) = layers {t['leaf_s'] * ms:.2f} "
            f"+ container glue {t['glue_s'] * ms:.2f} + unattributed {t['unattributed_s'] * ms:+.2f} ms "
            f"(negative: profiler and hook overhead)",
            f"  gap (forward time no leaf layer accounts for): {t['gap_s'] * ms:+.2f} ms "
            f"({100 * t['gap_s'] / t['model_s']:+.1f}%)",
            f"  {t['flops'] / 1e9:.3f} GFLOPs, {t['bytes'] / 1e6:.1f} MB moved; waterline bound "
            f"{t['bound_s'] * ms:.2f} ms -> efficiency {100 * t['efficiency']:.1f}% "
            f"(computational efficiency FLOPs/(latency x peak) {100 * t['computational_efficiency']:.1f}%)",
        ])

    def table(self, top: int = 25, leaves_only: bool = False) -> str:
        rows = [r for r in self.layers if r.leaf or not leaves_only]
        rows = sorted(rows, key=lambda r: r.time_s, reverse=True)[:top]
        head = (f"{'layer':<34} {'kind':<15} {'ms':>7} {'%':>5} {'MFLOPs':>8} {'MB':>7} {'FLOP/B':>6} "
                f"{'GFLOP/s':>8} {'bound ms':>8} {'limit':>6} {'eff %':>6}")
        out = [head, "-" * len(head)]
        total = self.totals["profiled_s"]
        for r in rows:
            name = r.name if len(r.name) <= 34 else "..." + r.name[-31:]
            eff = f"{100 * r.efficiency:.1f}" + ("" if r.physical else "*")
            out.append(f"{name:<34} {r.kind[:15]:<15} {r.time_s * 1e3:>7.3f} {100 * r.time_s / total:>5.1f} "
                       f"{r.flops / 1e6:>8.1f} {r.bytes / 1e6:>7.2f} {r.intensity:>6.1f} "
                       f"{r.attained_flops / 1e9:>8.1f} {r.bound_s * 1e3:>8.3f} {r.limiter[:6]:>6} {eff:>6}")
        out.append("* memory-bound with traffic under twice the last-level cache: the DRAM bound is not a hard "
                   "limit there")
        return "\n".join(out)

    def group_table(self, by: str = "kind") -> str:
        head = f"{by:<28} {'n':>4} {'ms':>8} {'%':>5} {'GFLOPs':>8} {'MB':>8} {'FLOP/B':>6} {'GFLOP/s':>8} {'eff %':>6}"
        out = [head, "-" * len(head)]
        for g in self.group(by):
            out.append(f"{g.key[:28]:<28} {g.layers:>4} {g.time_s * 1e3:>8.3f} {100 * g.share:>5.1f} "
                       f"{g.flops / 1e9:>8.3f} {g.bytes / 1e6:>8.2f} {g.intensity:>6.1f} "
                       f"{g.attained_flops / 1e9:>8.1f} {100 * g.efficiency:>6.1f}")
        if any(g.efficiency > 1 for g in self.group(by)):
            out.append("efficiency over 100%: memory-bound layers whose data stays in cache beat the DRAM bound")
        return "\n".join(out)


# -- measurement --------------------------------------------------------------------------------------------------
class _Scopes:
    """Forward hooks around every module's forward: a profiler scope (clock 'wall'), or the calling thread's
    CPU time (clock 'thread', self times collected here per pass). Also notes each module's input shape."""

    def __init__(self, model: nn.Module, clock: str = "wall") -> None:
        self.modules = {}
        self.input_shapes: dict[str, tuple] = {}
        self.handles = []
        self.clock = clock
        self.stack: list = []
        self.passes: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.recording = False
        for name, mod in model.named_modules():
            key = name or ROOT
            self.modules[key] = mod
            self.handles.append(mod.register_forward_pre_hook(self._enter(key)))
            self.handles.append(mod.register_forward_hook(self._exit, always_call=True))

    def _enter(self, key: str):
        def pre(mod, args):
            if key not in self.input_shapes:
                x = args[0] if args and isinstance(args[0], torch.Tensor) else None
                self.input_shapes[key] = tuple(x.shape) if x is not None else None
            if self.clock == "wall":
                rf = record_function(SCOPE + key)
                rf.__enter__()
                self.stack.append(rf)
            else:
                self.stack.append([key, 0, time.thread_time_ns()])  # [name, children's ns, start]
        return pre

    def _exit(self, mod, args, output):
        if self.clock == "wall":
            self.stack.pop().__exit__(None, None, None)
            return
        now = time.thread_time_ns()
        key, children, start = self.stack.pop()
        inclusive = now - start
        if self.stack:
            self.stack[-1][1] += inclusive
        if not self.recording:
            return
        c = self.current
        c[key] = c.get(key, 0.0) + (inclusive - children) / 1e9
        c["__calls__" + key] = c.get("__calls__" + key, 0) + 1
        if not self.stack:
            c["__total__"] = inclusive / 1e9
            self.passes.append(c)
            self.current = {}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _self_times(events, device_type: str) -> list[dict[str, float]]:
    """Per forward pass (one root scope each): module name -> self time in seconds, and the root's total."""
    def dur(e) -> float:
        if device_type == "cuda":
            return e.device_time_total / 1e6
        return (e.time_range.end - e.time_range.start) / 1e6

    def scope_parent(e):
        p = e.cpu_parent
        while p is not None and not p.name.startswith(SCOPE):
            p = p.cpu_parent
        return p

    scopes = [e for e in events if e.name.startswith(SCOPE)]
    child_time: dict[int, float] = {}
    parent_of = {}
    for e in scopes:
        p = scope_parent(e)
        parent_of[e.id] = p
        if p is not None:
            child_time[p.id] = child_time.get(p.id, 0.0) + dur(e)
    passes: dict[int, dict[str, float]] = {}
    order = []
    for e in scopes:
        root = e
        while parent_of.get(root.id) is not None:
            root = parent_of[root.id]
        if root.id not in passes:
            passes[root.id] = {"__total__": dur(root)}
            order.append((root.time_range.start, root.id))
        name = e.name[len(SCOPE):]
        passes[root.id][name] = passes[root.id].get(name, 0.0) + dur(e) - child_time.get(e.id, 0.0)
        passes[root.id]["__calls__" + name] = passes[root.id].get("__calls__" + name, 0) + 1
    return [passes[i] for _, i in sorted(order)]


def _time_modules(model: nn.Module, x: torch.Tensor, dev: torch.device, clock: str, warmup: int,
                  repeats: int) -> tuple[_Scopes, list[dict[str, float]]]:
    """Hooks on every module, `warmup` untimed then `repeats` timed forward passes: per pass, module -> self time."""
    scopes = _Scopes(model, clock)
    try:
        for _ in range(warmup):
            model(x)
        if clock == "thread":
            scopes.recording = True
            for _ in range(repeats):
                model(x)
            return scopes, scopes.passes
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(repeats):
                model(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
        return scopes, _self_times(prof.events(), dev.type)
    finally:
        scopes.remove()


def _layer_rows(scopes: _Scopes, passes: list[dict[str, float]], counts: CountResult, peak_flops: float,
                bandwidth: float, llc: int | None) -> tuple[list[LayerRow], list[str]]:
    """One row per module that ran (median self time joined with its counted kernels), and the names of counted
    modules that no hook saw."""
    records_by_module: dict[str, list[OpRecord]] = {}
    for r in counts.records:
        records_by_module.setdefault(r.module or ROOT, []).append(r)
    rows = []
    for key, mod in scopes.modules.items():
        times = [p[key] for p in passes if key in p]
        if not times:
            continue  # never called in forward (e.g. a pruned head)
        recs = records_by_module.get(key, [])
        tot_bytes = sum(r.bytes_read + r.bytes_written for r in recs)
        bound, comp, mem = kernel_bound(recs, peak_flops, bandwidth)
        leaf = next(iter(mod.children()), None) is None
        limiter = "compute" if comp >= mem else "memory"
        rows.append(LayerRow(
            name=key, type=type(mod).__name__, kind=layer_kind(mod, scopes.input_shapes.get(key), leaf), leaf=leaf,
            calls=int(passes[0].get("__calls__" + key, 1)), time_s=statistics.median(times),
            macs=sum(r.macs for r in recs), flops=sum(r.flops + r.elementwise_flops for r in recs), bytes=tot_bytes,
            activations=sum(r.activations for r in recs), compute_s=comp, memory_s=mem, bound_s=bound,
            limiter=limiter, physical=limiter == "compute" or llc is None or tot_bytes > 2 * llc))
    unmatched = sorted(k for k in records_by_module if k not in scopes.modules)
    return rows, unmatched


def _peaks_dict(peaks: HardwarePeaks, llc: int | None) -> dict[str, Any]:
    """The ceilings a profile or comparison was measured against, as stored with it."""
    return dict(compute_gflops=peaks.compute_gflops, bandwidth_gbs=peaks.bandwidth_gbs,
                cache_bandwidth_gbs=peaks.cache_bandwidth_gbs, llc_bytes=llc, measured_at=peaks.measured_at,
                probe_gflops=peaks.probe_gflops())


def profile_layers(model: nn.Module | str, input_size: Sequence[int] = (1, 3, 224, 224), *,
                   dtype: str | torch.dtype = "fp32", channels_last: bool = False, threads: int | None = None,
                   device: str | torch.device = "cpu", warmup: int = 2, repeats: int = 5,
                   model_repeats: int | None = None, max_time_s: float = 20.0, peaks: HardwarePeaks | None = None,
                   counts: CountResult | None = None, clock: str = "wall") -> LayerProfile:
    """Measure every module's time in an eager forward pass and join it with `count()` into a waterline profile.

    input_size: (B, C, H, W) or (C, H, W) for batch 1. dtype: the model and input are cast to it ('fp32', 'bf16',
    'fp16'; the counts use the same dtype, so bytes match what runs). channels_last: NHWC memory format.
    threads: torch intra-op threads. repeats: profiled forward passes (each layer's time is its median over
    them); model_repeats: unprofiled passes for the whole-model time (default max(repeats, 10)).
    peaks: this machine's ceilings (default `hardware_peaks(device, threads=threads)`, measured once and cached).
    counts: a `count()` result for the same model and input (computed on the meta device when not given).
    clock: 'wall' (torch.profiler scopes; elapsed time) or 'thread' (the calling thread's CPU time, read in the
    same hooks; CPU with threads=1 only). On a busy shared machine the wall clock charges a layer for the time
    other processes held the core, which inflates long layers more than short ones; the thread clock does not.
    The caller's model is not changed (a copy is profiled).
    """
    model, name = _resolve_model(model)
    dt = dtype_name(dtype)
    dev = resolve_device(device)
    batch, chw = split_input_size(input_size)
    size = (batch or 1, *chw)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")

    old_threads = set_threads(threads)
    try:
        check_clock(clock, dev)
        if peaks is None:
            peaks = hardware_peaks(dev, threads=threads, dtypes=("fp32",) if dt == "fp32" else ("fp32", dt))
        peak_flops, bandwidth = peaks.peak_flops(dt), peaks.bandwidth
        model = copy.deepcopy(model).eval().to(device=dev, dtype=DTYPES[dt])
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if counts is None:
            counts = count(model, size, dtype=DTYPES[dt], device="meta")
        x = torch.randn(*size, device=dev, dtype=DTYPES[dt])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        with torch.inference_mode():
            model_stats = measure(lambda: model(x), device=dev, warmup=warmup,
                                  repeats=model_repeats or max(repeats, 10), max_time_s=max_time_s, clock=clock)
            scopes, passes = _time_modules(model, x, dev, clock, warmup, repeats)
        llc = peaks.llc_bytes
        if dev.type == "cuda":
            llc = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", None)
        rows, unmatched = _layer_rows(scopes, passes, counts, peak_flops, bandwidth, llc)

        leaf_s = sum(r.time_s for r in rows if r.leaf)
        glue_s = sum(r.time_s for r in rows if not r.leaf)
        profiled_s = leaf_s + glue_s  # the sum of per-module medians: one typical profiled pass
        model_s = model_stats.median_s
        tot = counts.totals
        flops = tot.flops + tot.elementwise_flops
        bound_s = kernel_bound(counts.records, peak_flops, bandwidth)[0]
        totals = dict(model_s=model_s, model_min_s=model_stats.min_s, model_max_s=model_stats.max_s,
                      model_p90_s=model_stats.p90_s, profiled_s=profiled_s,
                      profiled_median_s=statistics.median(p["__total__"] for p in passes), leaf_s=leaf_s, glue_s=glue_s,
                      unattributed_s=model_s - profiled_s, gap_s=model_s - leaf_s, macs=tot.macs, flops=flops,
                      bytes=tot.bytes, activations=tot.activations, params=counts.params, bound_s=bound_s,
                      efficiency=bound_s / model_s, computational_efficiency=flops / (model_s * peak_flops),
                      roofline_bound_s=max(flops / peak_flops, tot.bytes / bandwidth))
        return LayerProfile(model=name, input_size=size, dtype=dt, channels_last=channels_last,
                            threads=torch.get_num_threads(), device=str(dev), machine=machine_info(dev),
                            peaks=_peaks_dict(peaks, llc), layers=rows, totals=totals, repeats=len(passes),
                            uncounted=dict(counts.uncounted), unmatched=unmatched, clock=clock)
    finally:
        torch.set_num_threads(old_threads)


# -- whole models -------------------------------------------------------------------------------------------------
@dataclass
class ModelRow:
    """One model of a comparison: counts, measured inference latency, and its efficiency on this machine."""

    name: str
    params: int
    macs: int
    flops: int
    bytes: int
    activations: int
    latency: LatencyStats
    bound_s: float
    peak_flops: float
    top1: float | None = None

    @property
    def latency_s(self) -> float:
        return self.latency.median_s

    @property
    def efficiency(self) -> float:
        """Waterline bound / measured latency."""
        return self.bound_s / self.latency_s

    @property
    def computational_efficiency(self) -> float:
        """FLOPs / (latency x peak): Lavin's latency = operations / (efficiency x peak), solved for efficiency."""
        return self.flops / (self.latency_s * self.peak_flops)

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), latency_s=self.latency_s, efficiency=self.efficiency,
                    computational_efficiency=self.computational_efficiency)


@dataclass
class Comparison(JsonRecord):
    """Several models timed and counted at the same input size, dtype and thread count on one machine."""

    rows: list[ModelRow]
    input_size: tuple[int, int, int, int]
    dtype: str
    channels_last: bool
    threads: int
    device: str
    machine: dict[str, Any]
    peaks: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(input_size=list(self.input_size), dtype=self.dtype, channels_last=self.channels_last,
                    threads=self.threads, device=self.device, machine=self.machine, peaks=self.peaks,
                    rows=[r.to_dict() for r in self.rows])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Comparison":
        names = set(ModelRow.__dataclass_fields__)
        rows = [ModelRow(**{k: (LatencyStats(**v) if k == "latency" else v) for k, v in r.items() if k in names})
                for r in d["rows"]]
        return cls(rows=rows, input_size=tuple(d["input_size"]), dtype=d["dtype"], channels_last=d["channels_last"],
                   threads=d["threads"], device=d["device"], machine=d["machine"], peaks=d["peaks"])

    def describe(self) -> str:
        b, c, h, w = self.input_size
        return (f"batch {b} {c}x{h}x{w} {self.dtype}{' channels_last' if self.channels_last else ''}, "
                f"{self.threads} threads, {self.device}")

    def table(self) -> str:
        head = (f"{'model':<24} {'params M':>8} {'GMACs':>7} {'GFLOPs':>7} {'MB':>8} {'acts M':>7} {'ms':>8} "
                f"{'img/s':>8} {'bound ms':>8} {'eff %':>6} {'comp %':>6} {'top-1':>5}")
        out = [head, "-" * len(head)]
        for r in sorted(self.rows, key=lambda r: r.latency_s):
            top1 = "-" if r.top1 is None else f"{r.top1:.1f}"
            out.append(f"{r.name[:24]:<24} {r.params / 1e6:>8.2f} {r.macs / 1e9:>7.3f} {r.flops / 1e9:>7.3f} "
                       f"{r.bytes / 1e6:>8.1f} {r.activations / 1e6:>7.2f} {r.latency_s * 1e3:>8.2f} "
                       f"{self.input_size[0] / r.latency_s:>8.1f} {r.bound_s * 1e3:>8.3f} "
                       f"{100 * r.efficiency:>6.1f} {100 * r.computational_efficiency:>6.1f} {top1:>5}")
        out.append("eff: waterline bound / latency; comp: FLOPs / (latency x peak); FLOPs = 2 x MACs + element-wise")
        return "\n".join(out)


def compare_models(models: Sequence[nn.Module | str], input_size: Sequence[int] = (1, 3, 224, 224), *,
                   dtype: str | torch.dtype = "fp32", channels_last: bool = False, threads: int | None = None,
                   device: str | torch.device = "cpu", warmup: int = 2, repeats: int = 10,
                   max_time_s: float = 20.0, peaks: HardwarePeaks | None = None) -> Comparison:
    """Count (meta device) and time (inference, median of `repeats`) each model at the same input size, and
    place it against this machine's ceilings. Models are registered names or modules; a name's official top-1
    comes from its card. dtype: 'fp32', or 'bf16' / 'fp16' under autocast (counted with that dtype's bytes)."""
    if not models:
        raise ValueError("compare_models needs at least one model")
    dt = dtype_name(dtype)
    dev = resolve_device(device)
    batch, chw = split_input_size(input_size)
    size = (batch or 1, *chw)
    old_threads = set_threads(threads)
    try:
        if peaks is None:
            peaks = hardware_peaks(dev, threads=threads, dtypes=("fp32",) if dt == "fp32" else ("fp32", dt))
        peak_flops = peaks.peak_flops(dt)
        rows = []
        for m in models:
            module, name = _resolve_model(m)
            card = getattr(module, "card", None)
            counts = count(module, size, dtype=DTYPES[dt], device="meta")
            bench = benchmark(module, size, dtype=dt, channels_last=channels_last, device=dev, warmup=warmup,
                              repeats=repeats, max_time_s=max_time_s)
            tot = counts.totals
            rows.append(ModelRow(name=name, params=counts.params, macs=tot.macs,
                                 flops=tot.flops + tot.elementwise_flops, bytes=tot.bytes,
                                 activations=tot.activations, latency=bench.points[0].latency,
                                 bound_s=waterline_bound(counts, peaks, dt), peak_flops=peak_flops,
                                 top1=getattr(card, "top1", None)))
            del module
        return Comparison(rows=rows, input_size=size, dtype=dt, channels_last=channels_last,
                          threads=torch.get_num_threads(), device=str(dev), machine=machine_info(dev),
                          peaks=_peaks_dict(peaks, peaks.llc_bytes))
    finally:
        torch.set_num_threads(old_threads)
