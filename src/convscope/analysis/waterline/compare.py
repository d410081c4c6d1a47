"""Whole models side by side: `compare_models` counts and times each at the same input size, dtype and thread
count, and places it against this machine's ceilings (`Comparison`, one `ModelRow` per model)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ...models import resolve_model
from ...utils import resolve_device, text_table, threads_set
from ..counting import count
from ..hardware import DTYPES, HardwarePeaks, dtype_name, hardware_peaks, machine_info
from ..timing import LatencyStats, benchmark, split_input_size
from .bounds import peaks_dict, waterline_bound
from .results import RunSetting


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
class Comparison(RunSetting):
    """Several models timed and counted at the same input size, dtype and thread count on one machine."""

    rows: list[ModelRow]

    def to_dict(self) -> dict[str, Any]:
        return dict(input_size=list(self.input_size), dtype=self.dtype, channels_last=self.channels_last,
                    threads=self.threads, device=self.device, machine=self.machine, peaks=self.peaks,
                    rows=[r.to_dict() for r in self.rows])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        names = set(ModelRow.__dataclass_fields__)
        rows = [ModelRow(**{k: (LatencyStats(**v) if k == "latency" else v) for k, v in r.items() if k in names})
                for r in d["rows"]]
        return cls(rows=rows, input_size=tuple(d["input_size"]), dtype=d["dtype"], channels_last=d["channels_last"],
                   threads=d["threads"], device=d["device"], machine=d["machine"], peaks=d["peaks"])

    def table(self) -> str:
        """One row per model, fastest first."""
        rows = [[r.name[:24], f"{r.params / 1e6:.2f}", f"{r.macs / 1e9:.3f}", f"{r.flops / 1e9:.3f}",
                 f"{r.bytes / 1e6:.1f}", f"{r.activations / 1e6:.2f}", f"{r.latency_s * 1e3:.2f}",
                 f"{self.input_size[0] / r.latency_s:.1f}", f"{r.bound_s * 1e3:.3f}", f"{100 * r.efficiency:.1f}",
                 f"{100 * r.computational_efficiency:.1f}", "-" if r.top1 is None else f"{r.top1:.1f}"]
                for r in sorted(self.rows, key=lambda r: r.latency_s)]
        head = ("model", "params M", "GMACs", "GFLOPs", "MB", "acts M", "ms", "img/s", "bound ms", "waterline eff %",
                "comp. eff %", "top-1")
        return (text_table(head, rows) + "\neff: waterline bound / latency; comp: FLOPs / (latency x peak); "
                "FLOPs = 2 x MACs + element-wise")


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
    with threads_set(threads):
        if peaks is None:
            peaks = hardware_peaks(dev, threads=threads, dtypes=("fp32",) if dt == "fp32" else ("fp32", dt))
        peak_flops = peaks.peak_flops(dt)
        rows = []
        for m in models:
            module, name = resolve_model(m)
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
                          peaks=peaks_dict(peaks, peaks.llc_bytes))
