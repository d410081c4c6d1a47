"""Latency and throughput of a model on this machine: inference or training steps, over batch sizes.

Every figure is a median of repeated runs after warm-up (p90, min and max are reported beside it), because
timings on a shared machine are noisy. With `compile=True` the first call (which compiles) is timed apart and
reported as `compile_s`; it never enters the latency statistics.

Peak memory is the transient memory of one step, measured by the operating system on CPU and by the caching
allocator on CUDA; see `MEMORY_METHOD` for exactly what each number includes.
"""
from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..files import JsonRecord
from ..models import resolve_model
from ..utils import resolve_device, text_table, threads_set
from .hardware import DTYPES, PeakMemory, dtype_name, machine_info, wall_timer

MODES = ("inference", "train")
MEMORY_METHOD = {
    "cpu": "peak resident set size of the process during the timed runs and all warm-up runs but the first "
           "(VmHWM, reset through /proc/self/clear_refs) minus the resident size before them (after gc and "
           "malloc_trim): the transient memory of one step (activations, workspaces, and in training the "
           "gradients, freed every step), as the OS sees it; parameters, inputs and optimizer state, which "
           "persist from the first call, are not included",
    "cuda": "torch.cuda.max_memory_allocated() during the timed runs and all warm-up runs but the first, minus "
            "the memory allocated before them: the transient tensors of one step (activations, workspaces, "
            "gradients); parameters, inputs and optimizer state are not included, nor the allocator's reserve",
}


@dataclass
class LatencyStats:
    """Summary of repeated timings, in seconds."""

    median_s: float
    p90_s: float
    min_s: float
    max_s: float
    mean_s: float
    n: int

    @classmethod
    def from_times(cls, times: Sequence[float]) -> LatencyStats:
        if not times:
            raise ValueError("no timings to summarise")
        s = sorted(times)
        # p90 by linear interpolation between order statistics (numpy's default)
        pos = 0.9 * (len(s) - 1)
        lo = math.floor(pos)
        p90 = s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)
        return cls(statistics.median(s), p90, s[0], s[-1], statistics.fmean(s), len(s))


CLOCKS = ("wall", "thread")


def check_clock(clock: str, device: torch.device) -> None:
    """'thread' (CPU time of the calling thread) measures the work only when all of it runs on that thread."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}; got {clock!r}")
    if clock == "thread" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("clock='thread' times the calling thread's CPU time, which is the whole work only on "
                         f"the CPU with one thread; got device {device}, {torch.get_num_threads()} threads")


def _thread_timer(fn: Callable[[], Any]) -> float:
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def measure(fn: Callable[[], Any], *, device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 20,
            max_time_s: float = 10.0, min_repeats: int = 3, clock: str = "wall") -> LatencyStats:
    """Time `fn()` `repeats` times after `warmup` calls; stop early once `max_time_s` is spent (but never
    before `min_repeats` timed runs). CUDA work is timed with events after synchronising.

    clock: 'wall' (elapsed time) or 'thread' (CPU time of the calling thread: on one CPU thread, the time the
    work itself took, without the time other processes held the core; for shared, busy machines)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    dev = resolve_device(device)
    check_clock(clock, dev)
    timed = wall_timer(dev) if clock == "wall" else _thread_timer
    for _ in range(warmup):
        timed(fn)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        times.append(timed(fn))
        if len(times) >= min(min_repeats, repeats) and time.perf_counter() - start > max_time_s:
            break
    return LatencyStats.from_times(times)


def measure_interleaved(fns: dict[str, Callable[[], Any]], *, device: str | torch.device = "cpu", warmup: int = 2,
                        rounds: int = 20, max_time_s: float = 60.0, min_rounds: int = 3,
                        clock: str = "wall") -> dict[str, LatencyStats]:
    """Time several callables against each other on a shared machine: each round calls every one of them once, in
    an order that rotates from round to round, so a change of load hits them all alike; stop after `rounds`
    rounds or once `max_time_s` is spent (never before `min_rounds`). Returns each callable's statistics over
    the rounds, in the order of `fns`. Compare them as ratios of medians measured in this one call."""
    if not fns:
        raise ValueError("measure_interleaved needs at least one callable")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0; got rounds={rounds}, warmup={warmup}")
    dev = resolve_device(device)
    check_clock(clock, dev)
    timed = wall_timer(dev) if clock == "wall" else _thread_timer
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            timed(fns[name])
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(fns[name]))
        if r + 1 >= min(min_rounds, rounds) and time.perf_counter() - start > max_time_s:
            break
    return {n: LatencyStats.from_times(times[n]) for n in names}


# -- results ------------------------------------------------------------------------------------------------------
@dataclass
class BatchPoint:
    """Latency of one step at one batch size; throughput = batch / median latency (items per second)."""

    batch: int
    latency: LatencyStats
    throughput: float
    peak_memory_bytes: int | None = None
    compile_s: float | None = None


@dataclass
class BenchmarkResult(JsonRecord):
    """Timings of one model in one configuration over batch sizes, with the machine they were measured on."""

    model: str
    input_size: tuple[int, int, int]
    mode: str
    dtype: str
    channels_last: bool
    compile: bool
    threads: int
    device: str
    machine: dict[str, Any]
    points: list[BatchPoint] = field(default_factory=list)
    memory_method: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def point(self, batch: int) -> BatchPoint:
        for p in self.points:
            if p.batch == batch:
                return p
        raise ValueError(f"batch {batch} was not measured; measured: {[p.batch for p in self.points]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchmarkResult:
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        d["points"] = [BatchPoint(**dict(p, latency=LatencyStats(**p["latency"]))) for p in d["points"]]
        return cls(**d)

    def describe(self) -> str:
        c, h, w = self.input_size
        opts = [self.mode, self.dtype + (" autocast" if self.dtype != "fp32" else "")]
        opts += ["channels_last"] * self.channels_last + ["torch.compile"] * self.compile
        return f"{self.model} {c}x{h}x{w}, {', '.join(opts)}, {self.threads} threads, {self.device}"

    def table(self) -> str:
        """One row per batch size; a torch.compile run notes its compile time, excluded from the latency."""
        rows = []
        for p in self.points:
            lat = p.latency
            rows.append([p.batch, f"{lat.median_s * 1e3:.2f}", f"{lat.p90_s * 1e3:.2f}", f"{lat.min_s * 1e3:.2f}",
                         f"{lat.max_s * 1e3:.2f}", lat.n, f"{p.throughput:.1f}",
                         "-" if p.peak_memory_bytes is None else f"{p.peak_memory_bytes / 2 ** 20:.0f}",
                         "" if p.compile_s is None else f"(compile {p.compile_s:.1f} s, excluded)"])
        return text_table(("batch", "median ms", "p90 ms", "min ms", "max ms", "runs", "items/s", "peak MiB", ""),
                          rows, align="rrrrrrrrl", rule="")


# -- the benchmark ------------------------------------------------------------------------------------------------
def _loss(out: Any) -> torch.Tensor:
    """Cross-entropy against fixed labels for logits; the mean of every output otherwise."""
    if isinstance(out, torch.Tensor) and out.ndim == 2:
        target = torch.arange(out.shape[0], device=out.device) % out.shape[1]
        return F.cross_entropy(out.float(), target)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return sum(o.float().mean() for o in outs)


def _optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-6, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-6)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw'; got {name!r}")


def split_input_size(input_size: Sequence[int]) -> tuple[int | None, tuple[int, int, int]]:
    """(batch or None, (C, H, W)) from a (C, H, W) or (B, C, H, W) size; ValueError for anything else."""
    size = tuple(int(s) for s in input_size)
    if len(size) == 4:
        return size[0], size[1:]
    if len(size) == 3:
        return None, size
    raise ValueError(f"input_size must be (C, H, W) or (batch, C, H, W); got {tuple(input_size)}")


def benchmark(model: nn.Module | str, input_size: Sequence[int] = (3, 224, 224), *,
              batch_sizes: Sequence[int] | None = None, mode: str = "inference", dtype: str | torch.dtype = "fp32",
              channels_last: bool = False, compile: bool = False, threads: int | None = None,
              device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 20, max_time_s: float = 10.0,
              optimizer: str = "sgd") -> BenchmarkResult:
    """Median latency (with p90/min/max), throughput and peak memory of `model` at each batch size.

    mode: 'inference' (forward under inference_mode, eval mode) or 'train' (forward + backward + optimizer step
    in train mode, cross-entropy on logits; `optimizer` 'sgd' with momentum or 'adamw'). dtype: 'fp32', or
    'bf16' / 'fp16' under autocast. channels_last: model and input in NHWC memory format. compile: torch.compile
    the model; its first call per batch size is reported as `compile_s` and excluded. threads: torch intra-op
    threads during the measurement. The model is deep-copied, so the caller's model is never changed.
    input_size: (C, H, W), or (B, C, H, W) when `batch_sizes` is not given.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    dt = dtype_name(dtype)
    dev = resolve_device(device)
    batch, chw = split_input_size(input_size)
    batch_sizes = tuple(batch_sizes) if batch_sizes is not None else (batch or 1,)
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers; got {batch_sizes}")
    model, name = resolve_model(model)
    with threads_set(threads):
        model = copy.deepcopy(model).to(dev)
        model.train(mode == "train")
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        runner = torch.compile(model, dynamic=False) if compile else model
        opt = _optimizer(optimizer, [p for p in model.parameters() if p.requires_grad]) if mode == "train" else None

        def autocast():
            return torch.autocast(dev.type, dtype=DTYPES[dt]) if dt != "fp32" else contextlib.nullcontext()

        result = BenchmarkResult(model=name, input_size=chw, mode=mode, dtype=dt, channels_last=channels_last,
                                 compile=compile, threads=torch.get_num_threads(), device=str(dev),
                                 machine=machine_info(dev), memory_method=MEMORY_METHOD[dev.type],
                                 settings=dict(warmup=warmup, repeats=repeats, max_time_s=max_time_s,
                                               optimizer=optimizer if mode == "train" else None))
        for b in batch_sizes:
            x = torch.randn(int(b), *chw, device=dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)

            if mode == "inference":
                def step(x=x):
                    with torch.inference_mode(), autocast():
                        runner(x)
            else:
                def step(x=x):
                    opt.zero_grad(set_to_none=True)
                    with autocast():
                        out = runner(x)
                    _loss(out).backward()
                    opt.step()

            # The first call (which compiles, with compile=True) counts as a warm-up run; one-time allocations
            # it makes (library initialisation, optimizer state) stay out of the memory figure.
            compile_s = wall_timer(dev)(step)
            mem = PeakMemory(dev)
            mem.start()
            stats = measure(step, device=dev, warmup=max(warmup - 1, 0), repeats=repeats, max_time_s=max_time_s)
            result.points.append(BatchPoint(batch=int(b), latency=stats, throughput=int(b) / stats.median_s,
                                            peak_memory_bytes=mem.stop(), compile_s=compile_s if compile else None))
            del x, step
        return result
