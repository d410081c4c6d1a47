"""Whether the ceilings a profile or comparison was measured against can be right (no plotting dependency, so
the CLI's text output can say so too)."""
from __future__ import annotations

from typing import Any


def ceiling_warnings(peaks: dict[str, Any], cores: int | None = None) -> list[str]:
    """One line for each reason the ceilings in `peaks` (as a profile or comparison stores them) cannot be
    right: a last-level-cache bandwidth below the DRAM bandwidth, or a load average (recorded while measuring,
    `load_average`) above the machine's `cores` (default: `peaks['cores']`), i.e. measured under load."""
    lines = []
    dram, llc = peaks.get("bandwidth_gbs"), peaks.get("cache_bandwidth_gbs")
    if dram and llc and llc < dram:
        lines.append(f"the last-level-cache bandwidth ({llc:.1f} GB/s) is below the DRAM bandwidth ({dram:.1f} GB/s), "
                     "which cannot be: the ceilings were probably measured under load; rerun `convscope hw "
                     "--refresh` on an idle machine")
    load = peaks.get("load_average")
    load = load[0] if isinstance(load, (list, tuple)) and load else load
    cores = cores or peaks.get("cores")
    if isinstance(load, (int, float)) and cores and load > cores:
        lines.append(f"the ceilings were measured at a load average of {load:.2f} on {cores} cores (other work was "
                     "running), so they are probably low; rerun `convscope hw --refresh` on an idle machine")
    return lines


__all__ = ["ceiling_warnings"]
