"""A per-layer waterline profile and its rows: `LayerRow` (one module), `GroupRow` (layers summed by kind or
type) and `LayerProfile` (all of them with the model's totals, JSON and text tables)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ...files import JsonRecord
from ...utils import text_table


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
class RunSetting(JsonRecord):
    """What a profile or comparison ran with: input (B, C, H, W), dtype, memory format, threads, device, and the
    machine and ceilings (`peaks`) it was measured on."""

    input_size: tuple[int, int, int, int]
    dtype: str
    channels_last: bool
    threads: int
    device: str
    machine: dict[str, Any]
    peaks: dict[str, Any]

    def describe(self) -> str:
        """'batch 1 3x224x224 fp32[ channels_last], 2 threads, cpu'."""
        b, c, h, w = self.input_size
        return (f"batch {b} {c}x{h}x{w} {self.dtype}{' channels_last' if self.channels_last else ''}, "
                f"{self.threads} threads, {self.device}")


@dataclass
class LayerProfile(RunSetting):
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
    def from_dict(cls, d: dict[str, Any]) -> LayerProfile:
        row_fields = set(LayerRow.__dataclass_fields__)
        return cls(model=d["model"], input_size=tuple(d["input_size"]), dtype=d["dtype"],
                   channels_last=d["channels_last"], threads=d["threads"], device=d["device"],
                   machine=d["machine"], peaks=d["peaks"], totals=d["totals"], repeats=d["repeats"],
                   uncounted=d.get("uncounted", {}), unmatched=d.get("unmatched", []), clock=d.get("clock", "wall"),
                   layers=[LayerRow(**{k: v for k, v in r.items() if k in row_fields}) for r in d["layers"]])

    # -- text --------------------------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"{self.model} {super().describe()}" + (", thread CPU time" if self.clock == "thread" else "")

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
            f"{t['bound_s'] * ms:.2f} ms -> waterline efficiency {100 * t['efficiency']:.1f}% "
            f"(computational efficiency FLOPs/(latency x peak) {100 * t['computational_efficiency']:.1f}%)",
        ])

    def table(self, top: int = 25, leaves_only: bool = False) -> str:
        """The `top` slowest layers (containers' glue too unless `leaves_only`) with their counts, bound and
        efficiency."""
        rows = [r for r in self.layers if r.leaf or not leaves_only]
        total = self.totals["profiled_s"]
        cells = [[r.name if len(r.name) <= 34 else "..." + r.name[-31:], r.kind[:15], f"{r.time_s * 1e3:.3f}",
                  f"{100 * r.time_s / total:.1f}", f"{r.flops / 1e6:.1f}", f"{r.bytes / 1e6:.2f}", f"{r.intensity:.1f}",
                  f"{r.attained_flops / 1e9:.1f}", f"{r.bound_s * 1e3:.3f}", r.limiter,
                  f"{100 * r.efficiency:.1f}" + ("" if r.physical else "*")]
                 for r in sorted(rows, key=lambda r: r.time_s, reverse=True)[:top]]
        head = ("layer", "kind", "ms", "%", "MFLOPs", "MB", "FLOP/B", "GFLOP/s", "bound ms", "limit", "waterline eff %")
        return (text_table(head, cells, align="llrrrrrrrrr") + "\n* memory-bound with traffic under twice the "
                "last-level cache: the DRAM bound is not a hard limit there")

    def group_table(self, by: str = "kind") -> str:
        """The layers summed `by` "kind" or "type", slowest first."""
        groups = self.group(by)
        cells = [[g.key[:28], g.layers, f"{g.time_s * 1e3:.3f}", f"{100 * g.share:.1f}", f"{g.flops / 1e9:.3f}",
                  f"{g.bytes / 1e6:.2f}", f"{g.intensity:.1f}", f"{g.attained_flops / 1e9:.1f}",
                  f"{100 * g.efficiency:.1f}"] for g in groups]
        out = text_table((by, "n", "ms", "%", "GFLOPs", "MB", "FLOP/B", "GFLOP/s", "waterline eff %"), cells)
        if any(g.efficiency > 1 for g in groups):
            out += "\nwaterline efficiency over 100%: memory-bound layers whose data stays in cache beat the DRAM bound"
        return out
