"""The waterline bound of Lavin et al.: each kernel (aten call) needs at least max(FLOPs / peak compute, bytes /
peak bandwidth), and a sequence of kernels the sum of those; and the ceilings a result stores with it."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..counting import CountResult, OpRecord
from ..hardware import HardwarePeaks


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


def peaks_dict(peaks: HardwarePeaks, llc: int | None) -> dict[str, Any]:
    """The ceilings a profile or comparison was measured against, as stored with it."""
    return dict(compute_gflops=peaks.compute_gflops, bandwidth_gbs=peaks.bandwidth_gbs,
                cache_bandwidth_gbs=peaks.cache_bandwidth_gbs, llc_bytes=llc, measured_at=peaks.measured_at,
                probe_gflops=peaks.probe_gflops(), load_average=peaks.details.get("busy", {}).get("load_average"))
