"""What `count()` returns: one `OpRecord` per aten call, `Totals` summed over calls, and the `CountResult` that
groups them by operator, module and module type and prints them."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ...utils import text_table
from .conventions import macs_under


@dataclass
class OpRecord:
    """One aten call: what it cost and which module ran it."""

    op: str                 # e.g. "aten.convolution"
    module: str             # qualified name of the innermost nn.Module that ran it ("" for the top level)
    module_type: str        # class name of that module
    macs: int = 0           # multiply-accumulates of conv / matmul-like work
    flops: int = 0          # 2 * macs
    elementwise_flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    activations: int = 0    # output elements of conv / matmul-like ops
    out_shape: tuple = ()
    fvcore_macs: int = 0    # the call's count under fvcore's default handles (see `MACS_CONVENTIONS`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Totals:
    """Summed counts of a set of aten calls."""

    macs: int = 0
    flops: int = 0
    elementwise_flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    activations: int = 0
    calls: int = 0          # aten calls, views included
    fvcore_macs: int = 0    # see MACS_CONVENTIONS

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def arithmetic_intensity(self) -> float:
        """(FLOPs + element-wise FLOPs) per byte moved; 0 when nothing is moved."""
        return (self.flops + self.elementwise_flops) / self.bytes if self.bytes else 0.0

    def add(self, r: OpRecord | Totals) -> Totals:
        self.macs += r.macs
        self.flops += r.flops
        self.elementwise_flops += r.elementwise_flops
        self.bytes_read += r.bytes_read
        self.bytes_written += r.bytes_written
        self.activations += r.activations
        self.fvcore_macs += r.fvcore_macs
        self.calls += r.calls if isinstance(r, Totals) else 1
        return self

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), bytes=self.bytes, arithmetic_intensity=self.arithmetic_intensity)


def _group(records: Iterable[OpRecord], key: Callable[[OpRecord], str]) -> dict[str, Totals]:
    out: dict[str, Totals] = {}
    for r in records:
        out.setdefault(key(r), Totals()).add(r)
    return out


@dataclass
class CountResult:
    """What `count()` found: totals, per-call records, and the same summed per operator / module / type."""

    totals: Totals
    params: int
    records: list[OpRecord]
    by_operator: dict[str, Totals]
    by_module: dict[str, Totals]
    by_module_type: dict[str, Totals]
    uncounted: dict[str, int]
    input_size: tuple
    dtype: str
    model_name: str = ""
    train: bool = False
    device: str = "meta"

    @classmethod
    def from_records(cls, records: list[OpRecord], uncounted: dict[str, int], **fields: Any) -> CountResult:
        totals = Totals()
        for r in records:
            totals.add(r)
        return cls(totals=totals, records=records, uncounted=dict(uncounted),
                   by_operator=_group(records, lambda r: r.op), by_module=_group(records, lambda r: r.module),
                   by_module_type=_group(records, lambda r: r.module_type), **fields)

    def to_dict(self, records: bool = True) -> dict[str, Any]:
        """JSON-ready: totals, params, groupings, uncounted ops, and (unless `records=False`) every call."""
        d = dict(model_name=self.model_name, input_size=list(self.input_size), dtype=self.dtype, train=self.train,
                 device=self.device, params=self.params, totals=self.totals.to_dict(),
                 by_operator={k: v.to_dict() for k, v in self.by_operator.items()},
                 by_module={k: v.to_dict() for k, v in self.by_module.items()},
                 by_module_type={k: v.to_dict() for k, v in self.by_module_type.items()},
                 uncounted=dict(self.uncounted))
        if records:
            d["records"] = [dict(r.to_dict(), out_shape=list(r.out_shape)) for r in self.records]
        return d

    def macs_as(self, convention: str = "macs") -> int:
        """Total MACs under one of `MACS_CONVENTIONS` ("macs", "fvcore", "fvcore_manual_cf_ln")."""
        return macs_under(convention, self.totals, self.records)

    def summary(self) -> str:
        """One line: params, MACs, FLOPs, element-wise FLOPs, activations, bytes, uncounted ops."""
        t = self.totals
        size = "x".join(map(str, self.input_size))
        name = f"{self.model_name} " if self.model_name else ""
        return (f"{name}{size} {self.dtype}{' train' if self.train else ''}: {self.params / 1e6:.2f}M params, "
                f"{t.macs / 1e9:.3f} GMACs ({t.flops / 1e9:.3f} GFLOPs + {t.elementwise_flops / 1e9:.3f} G "
                f"element-wise), {t.activations / 1e6:.2f}M activations, {t.bytes / 1e6:.1f} MB moved; "
                f"uncounted: {self._uncounted() or 'none'}")

    def _uncounted(self) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(self.uncounted.items()))

    def table(self, by: str = "module", top: int = 20) -> str:
        """The `top` rows by MACs (then bytes), grouped `by` "module", "module_type", "operator" or "record"."""
        if by == "record":
            groups = [(f"{r.module or '<top>'}:{r.op}", Totals().add(r)) for r in self.records]
        else:
            table = {"module": self.by_module, "module_type": self.by_module_type,
                     "operator": self.by_operator}.get(by)
            if table is None:
                raise ValueError(f"table(by=...) expects 'module', 'module_type', 'operator' or 'record'; got {by!r}")
            groups = [(k or "<top>", v) for k, v in table.items()]
        groups.sort(key=lambda kv: (kv[1].macs, kv[1].bytes), reverse=True)
        total = self.totals

        def row(key: str, v: Totals, share: str | None = None) -> list[str]:
            return [key, str(v.calls), f"{v.macs / 1e9:.4f}", share or f"{100 * v.macs / max(total.macs, 1):.1f}",
                    f"{v.elementwise_flops / 1e9:.4f}", f"{v.bytes_read / 1e6:.2f}", f"{v.bytes_written / 1e6:.2f}",
                    f"{v.activations / 1e6:.3f}", f"{v.arithmetic_intensity:.1f}"]

        rows = [row(k, v) for k, v in groups[:top]]
        if len(groups) > top:
            rest = Totals()
            for _, v in groups[top:]:
                rest.add(v)
            rows.append(row(f"({len(groups) - top} more)", rest))
        rows.append(row("total", total, "100.0"))
        out = text_table((by, "calls", "GMACs", "MACs %", "elem GFLOPs", "MB read", "MB written", "acts (M)",
                          "FLOP/B"), rows)
        return out + ("\nuncounted: " + self._uncounted() if self.uncounted else "")
