"""The waterline bound of Lavin et al.: each kernel (aten call) needs at least max(FLOPs / peak compute, bytes /
peak bandwidth), and a sequence of kernels the sum of those; a deploy form's whole-model bound (its "roof"), each
layer priced at the peak of the dtype it runs in; and the ceilings a result stores with it."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..counting import CountResult, OpRecord, count
from ..hardware import HardwarePeaks, peak_dtype_name

# bytes per element of the tensors a form moves
FORM_WIDTHS = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


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


def form_roof(model_or_counts: CountResult | nn.Module, form: Any, peaks: HardwarePeaks,
              input_size: Sequence[int] | None = None) -> float:
    """The roof of a deploy form: a lower bound, in seconds, on one forward of the whole model in `form` on the
    machine of `peaks`, = the sum over its layers of max(compute time, memory time).

    model_or_counts: fp32 counts (`count(model, size)`: 4 bytes an element), or a model, counted here in fp32 at
    `input_size`. form: 'fp32', 'bf16', 'fp16' or 'int8', or anything whose `.dtype` is one (a deploy Form). A layer
    is the module its counted kernels ran in; what the roof assumes of each:
    - its kernels are fused: it takes max(summed compute time, summed memory time);
    - its matrix products (2 x MACs of conv, linear, matmul) run at the form dtype's peak (int8: the oneDNN int8
      ops/s), its element-wise FLOPs (norms, activations, softmax, adds) at the fp32 peak: they stay in float under
      bf16 autocast and in the int8 form;
    - every byte it reads or writes is at the form's width (fp32 4, bf16 / fp16 2, int8 1): the tensors between
      layers are in the form's dtype, as when Inductor fuses the int8 form's quantize / dequantize into its
      kernels. Optimistic for eager bf16 autocast (norms write fp32), which keeps the roof a lower bound.
    """
    dtype = peak_dtype_name(getattr(form, "dtype", form))
    counts = model_or_counts
    if isinstance(counts, nn.Module):
        if input_size is None:
            raise ValueError("form_roof of a model needs its input_size (batch, C, H, W)")
        counts = count(counts, input_size)
    if counts.dtype != "float32":
        raise ValueError(f"form_roof needs counts made in float32 (bytes at 4 per element); got {counts.dtype}")
    peak, fp32_peak = peaks.peak_flops(dtype), peaks.peak_flops("fp32")
    scale = FORM_WIDTHS[dtype] / 4 / peaks.bandwidth
    layers: dict[str, list[float]] = {}
    for r in counts.records:
        layer = layers.setdefault(r.module, [0.0, 0.0])
        layer[0] += r.flops / peak + r.elementwise_flops / fp32_peak
        layer[1] += (r.bytes_read + r.bytes_written) * scale
    return sum(max(c, m) for c, m in layers.values())


def peaks_dict(peaks: HardwarePeaks, llc: int | None) -> dict[str, Any]:
    """The ceilings a profile or comparison was measured against, as stored with it."""
    return dict(compute_gflops=peaks.compute_gflops, bandwidth_gbs=peaks.bandwidth_gbs,
                cache_bandwidth_gbs=peaks.cache_bandwidth_gbs, llc_bytes=llc, measured_at=peaks.measured_at,
                probe_gflops=peaks.probe_gflops(), load_average=peaks.details.get("busy", {}).get("load_average"))
