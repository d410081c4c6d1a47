"""Small helpers the benchmark scripts share (run as `python benchmarks/NAME.py`, so this directory is on sys.path)."""
from __future__ import annotations

import os

from convscope.analysis.hardware import machine_info


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (convscope.analysis.hardware's reading)."""
    return machine_info()["cpu_model"]


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, as text: how busy the shared machine was during a measurement."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
