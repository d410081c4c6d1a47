"""Timing every module of a model: `profile_layers` times each module's self time in an eager forward (profiler
scopes or the thread's CPU time, entered and left by `ModuleTracker` hooks) and joins it with `count()` into a
`LayerProfile`."""
from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from ...models import resolve_model
from ...utils import resolve_device, threads_set
from ..counting import CountResult, OpRecord, count
from ..hardware import DTYPES, HardwarePeaks, dtype_name, hardware_peaks, machine_info
from ..module_tracker import ModuleTracker
from ..timing import check_clock, measure, split_input_size
from .bounds import kernel_bound, peaks_dict
from .kinds import layer_kind
from .results import LayerProfile, LayerRow

SCOPE = "convscope::"
ROOT = "<model>"


class _Scopes(ModuleTracker):
    """Timing hooks around every module's forward, installed on construction: a profiler scope (clock 'wall'),
    or the calling thread's CPU time (clock 'thread', self times collected here per pass). Also notes each
    module's input shape."""

    def __init__(self, model: nn.Module, clock: str = "wall") -> None:
        super().__init__(model, root=ROOT)
        self.input_shapes: dict[str, tuple] = {}
        self.clock = clock
        self.open: list = []  # per running forward: its record_function, or [children's ns, start ns]
        self.passes: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.recording = False
        self.install()

    def on_enter(self, path: str, module: nn.Module, args: tuple) -> None:
        if path not in self.input_shapes:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.input_shapes[path] = tuple(x.shape) if x is not None else None
        if self.clock == "wall":
            rf = record_function(SCOPE + path)
            rf.__enter__()
            self.open.append(rf)
        else:
            self.open.append([0, time.thread_time_ns()])

    def on_exit(self, path: str, module: nn.Module) -> None:
        if self.clock == "wall":
            self.open.pop().__exit__(None, None, None)
            return
        now = time.thread_time_ns()
        children, start = self.open.pop()
        inclusive = now - start
        if self.open:
            self.open[-1][0] += inclusive
        if not self.recording:
            return
        c = self.current
        c[path] = c.get(path, 0.0) + (inclusive - children) / 1e9
        c["__calls__" + path] = c.get("__calls__" + path, 0) + 1
        if not self.open:
            c["__total__"] = inclusive / 1e9
            self.passes.append(c)
            self.current = {}


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
    model, name = resolve_model(model)
    dt = dtype_name(dtype)
    dev = resolve_device(device)
    batch, chw = split_input_size(input_size)
    size = (batch or 1, *chw)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")

    with threads_set(threads):
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
                            peaks=peaks_dict(peaks, llc), layers=rows, totals=totals, repeats=len(passes),
                            uncounted=dict(counts.uncounted), unmatched=unmatched, clock=clock)
