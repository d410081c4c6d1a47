"""Timing primitives: a wall timer per device (CUDA events on a GPU), peak extra memory of a piece of code, and
the probes that time large matrix products (float and int8), convolutions and copies to find this machine's ceilings."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...utils import resolve_device


# -- timing primitives --------------------------------------------------------------------------------------------
def wall_timer(dev: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function that runs `fn` once and returns its duration in seconds (CUDA events on a GPU)."""
    if dev.type == "cuda":
        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(dev)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return timed


def _times(fn: Callable[[], Any], timed, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        timed(fn)
    return [timed(fn) for _ in range(repeats)]


def _ladder(make: Callable[[int], tuple[Callable[[], Any], float]], sizes: Sequence[int], dev: torch.device,
            repeats: int, warmup: int, budget_s: float) -> dict[str, Any] | None:
    """Time the kernel `make(size) -> (fn, flops)` at growing sizes while the next size fits in `budget_s`
    (predicted from the best rate so far). Per size: median and best GFLOP/s; the probe's peak is the best run.
    None when the kernel does not exist for this dtype / device."""
    timed = wall_timer(dev)
    spent, rate, runs = 0.0, None, []
    for n in sizes:
        try:
            fn, flops = make(n)
            if rate is not None and spent + (repeats + warmup) * flops / rate > budget_s:
                break
            t0 = time.perf_counter()
            times = _times(fn, timed, repeats, warmup)
            spent += time.perf_counter() - t0
        except (RuntimeError, NotImplementedError):
            if runs:
                break
            return None
        rate = flops / min(times)
        runs.append(dict(size=n, flops=flops, median_s=statistics.median(times), min_s=min(times),
                         gflops=flops / min(times) / 1e9, median_gflops=flops / statistics.median(times) / 1e9))
    best = max(runs, key=lambda r: r["gflops"])
    return dict(gflops=best["gflops"], size=best["size"], runs=runs)


def measure_matmul(dtype: torch.dtype, device: str | torch.device = "cpu", *, sizes: Sequence[int] | None = None,
                   repeats: int = 5, warmup: int = 2, budget_s: float = 1.0) -> dict[str, Any] | None:
    """Peak GFLOP/s of square `torch.mm` (n x n times n x n, FLOPs = 2*n^3) in `dtype` over growing n."""
    dev = resolve_device(device)
    sizes = sizes or ((256, 512, 1024, 2048) if dev.type == "cpu" else (1024, 2048, 4096, 8192))

    def make(n):
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        c = torch.empty(n, n, device=dev, dtype=dtype)
        return (lambda: torch.mm(a, b, out=c)), 2.0 * n ** 3

    return _ladder(make, sizes, dev, repeats, warmup, budget_s)


def measure_conv(dtype: torch.dtype, device: str | torch.device = "cpu", *, channels: Sequence[int] | None = None,
                 spatial: int = 56, repeats: int = 5, warmup: int = 2, budget_s: float = 1.0) -> dict[str, Any] | None:
    """Peak GFLOP/s of a dense 3x3 convolution (batch 1, C -> C channels, spatial x spatial, padding 1) in
    `dtype`: an implicit matrix product with M = H*W, N = C, K = 9*C, so FLOPs = 2*M*N*K. On CPUs torch runs it
    with oneDNN, which can be faster than the BLAS behind `torch.mm` (MKL takes its AVX2 path on AMD CPUs)."""
    dev = resolve_device(device)
    channels = channels or (64, 128, 256)

    def make(c):
        x = torch.randn(1, c, spatial, spatial, device=dev).to(dtype)
        w = torch.randn(c, c, 3, 3, device=dev).to(dtype) / (3 * c ** 0.5)

        def fn():
            with torch.inference_mode():
                torch.nn.functional.conv2d(x, w, padding=1)
        return fn, 2.0 * spatial * spatial * c * 9 * c

    return _ladder(make, channels, dev, repeats, warmup, budget_s)


def measure_int8(device: str | torch.device = "cpu", *, sizes: Sequence[int] | None = None, repeats: int = 5,
                 warmup: int = 2, budget_s: float = 1.0) -> dict[str, Any] | None:
    """Peak int8 GOP/s (ops = 2*n^3) of an n x n by n x n product through `torch.ops.onednn.qlinear_pointwise`, the
    kernel the compiled int8 form runs (uint8 activations per tensor, prepacked int8 weights per channel, uint8
    out; VNNI or AMX-INT8 where the CPU has them). None off the CPU or where torch has no oneDNN int8 kernels."""
    dev = resolve_device(device)
    if dev.type != "cpu" or not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return None
    sizes = sizes or (256, 512, 1024, 2048)

    def make(n):
        g = torch.Generator().manual_seed(n)
        qx = torch.randint(0, 256, (n, n), dtype=torch.uint8, generator=g)
        w = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
        qw = torch.ops.onednn.qlinear_prepack(w, [n, n])
        w_scale, w_zp = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64)

        def fn():
            torch.ops.onednn.qlinear_pointwise(qx, 0.02, 128, qw, w_scale, w_zp, None, 1.0, 0, None, "none", [], "")
        return fn, 2.0 * n ** 3

    return _ladder(make, sizes, dev, repeats, warmup, budget_s)


def measure_copy(nbytes: int, device: str | torch.device = "cpu", *, repeats: int = 10,
                 warmup: int = 2) -> dict[str, Any]:
    """GB/s of `dst.copy_(src)` for float32 buffers of `nbytes` each, counting read + write (2 x nbytes); the
    best run and the median."""
    dev = resolve_device(device)
    n = max(nbytes // 4, 1024)
    src = torch.ones(n, device=dev)
    dst = torch.zeros(n, device=dev)
    times = _times(lambda: dst.copy_(src), wall_timer(dev), repeats, warmup)
    moved = 2 * 4 * n
    return dict(gbs=moved / min(times) / 1e9, median_gbs=moved / statistics.median(times) / 1e9,
                buffer_bytes=4 * n, median_s=statistics.median(times), min_s=min(times))


# -- peak memory --------------------------------------------------------------------------------------------------
def _proc_status(field_name: str) -> int | None:
    try:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak extra memory of the code run between start() and stop(), in bytes (None where not measurable)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        _trim_heap()
        self.base = _proc_status("VmRSS") or 0
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.ok = True
        except OSError:
            self.ok = False

    def stop(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        peak = _proc_status("VmHWM")
        return max(peak - self.base, 0) if self.ok and peak is not None else None
