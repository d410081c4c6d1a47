"""What this CPU can do for inference: the instruction-set features that decide whether bf16 or int8 can pay.

Recorded with every deploy measurement (benchmarks, `convscope optimize`): AMX (tile matrix units, bf16 and int8),
AVX-512 VNNI / AVX-VNNI (int8 dot products), AVX-512 BF16 (bf16 dot products), and the kernel level torch
dispatches to (`torch.backends.cpu.get_cpu_capability()`). Never assume: a CPU with VNNI and no AMX gains
little or nothing from bf16 matmuls, and int8 then comes from VNNI.
"""
from __future__ import annotations

from typing import Any

import torch

from ..analysis.hardware import cpu_flags

_FEATURES = ("amx_tile", "amx_bf16", "amx_int8", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx2", "fma")


def cpu_isa() -> dict[str, Any]:
    """{'capability': torch's CPU kernel level, 'amx': bool, 'vnni': bool, 'avx512_bf16': bool, 'flags': [...],
    'summary': 'AVX512 (VNNI, BF16; no AMX)'}."""
    flags = cpu_flags()
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        cap = "unknown"
    have = [f for f in _FEATURES if f in flags]
    amx = {"amx_tile", "amx_int8"} <= flags or {"amx_tile", "amx_bf16"} <= flags
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    bf16 = "avx512_bf16" in flags
    parts = [p for p, ok in (("VNNI", vnni), ("AVX512-BF16", bf16), ("AMX", amx)) if ok]
    lacking = [p for p, ok in (("AMX", amx), ("VNNI", vnni)) if not ok]
    summary = f"{cap} ({', '.join(parts) or 'no VNNI/BF16/AMX'}" + (f"; no {', no '.join(lacking)})" if lacking
                                                                   else ")")
    return dict(capability=cap, amx=amx, vnni=vnni, avx512_bf16=bf16, flags=have, summary=summary)
