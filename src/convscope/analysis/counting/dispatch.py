"""The `TorchDispatchMode` that records every aten call of a forward pass: its op, the module that ran it, and
its cost by `formulas.FORMULAS` (and what fvcore would count, by `conventions.fvcore_macs`)."""
from __future__ import annotations

import torch
from torch._ops import OpOverloadPacket
from torch.utils._python_dispatch import TorchDispatchMode

from ..module_tracker import ModuleTracker
from .conventions import fvcore_macs
from .formulas import DATA_MOVEMENT_OPS, FORMULAS, ZERO_COST_OPS, Formula, functional, tensors
from .results import OpRecord

# size/stride queries that a dispatch mode must not handle
_METADATA_QUERIES = {
    torch.ops.aten.sym_is_contiguous.default, torch.ops.aten.is_contiguous.default,
    torch.ops.aten.is_contiguous.memory_format, torch.ops.aten.is_strides_like_format.default,
    torch.ops.aten.is_non_overlapping_and_dense.default, torch.ops.aten.size.default,
    torch.ops.aten.sym_size.default, torch.ops.aten.stride.default, torch.ops.aten.sym_stride.default,
    torch.ops.aten.storage_offset.default, torch.ops.aten.sym_storage_offset.default,
    torch.ops.aten.numel.default, torch.ops.aten.sym_numel.default, torch.ops.aten.dim.default,
    torch.ops.prim.layout.default, torch.ops.prim.device.default,
}


def _footprint(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses: broadcast (stride-0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=False):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


class CountingMode(TorchDispatchMode):
    """Records one `OpRecord` per aten call into `records`, attributed to `tracker`'s current module; calls of
    ops without a formula or list entry are also tallied by name in `uncounted`."""

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.records: list[OpRecord] = []
        self.uncounted: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA_QUERIES:
            return NotImplemented
        packet = getattr(func, "_overloadpacket", func)
        op = functional(packet)
        formula = FORMULAS.get(op)
        kind = "formula" if formula else "zero" if op in ZERO_COST_OPS else \
            "move" if op in DATA_MOVEMENT_OPS else None
        if kind is None:  # a composite op without a formula: count its parts instead
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        self._record(str(packet), op, kind, formula, args, kwargs, out)
        return out

    def _record(self, name: str, op: OpOverloadPacket, kind: str | None, formula: Formula | None, args, kwargs,
                out) -> None:
        outs = tensors(out)
        rec = OpRecord(name, self.tracker.path, self.tracker.type_name,
                       out_shape=tuple(outs[0].shape) if outs else ())
        if kind is None:
            self.uncounted[name] = self.uncounted.get(name, 0) + 1
        if kind != "zero":
            ins = tensors((args, kwargs))
            rec.bytes_read = sum(_footprint(t) for t in ins)
            rec.bytes_written = sum(_footprint(t) for t in outs)
        if kind == "formula":
            macs, ew, *acts = formula(args, kwargs, out)
            rec.macs, rec.flops, rec.elementwise_flops = int(macs), 2 * int(macs), int(ew)
            if macs:
                rec.activations = int(acts[0]) if acts else outs[0].numel()
            rec.fvcore_macs = fvcore_macs(op, args, outs, rec.macs)
        self.records.append(rec)
