"""This machine described: CPU model, cores and threads, last-level cache, the CPU's matrix instructions,
accelerator, torch version, and the dtypes the lab measures."""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch

from ...utils import resolve_device

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: torch.dtype | str) -> str:
    """'fp32' / 'bf16' / 'fp16' for a torch dtype or one of those names (ValueError otherwise)."""
    if isinstance(dtype, str):
        name = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}.get(
            dtype, dtype)
        if name not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        return name
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, _DTYPE_NAMES))}; got {dtype}")
    return _DTYPE_NAMES[dtype]


# -- machine description ------------------------------------------------------------------------------------------
def _cpuinfo() -> tuple[str, int]:
    """(CPU model name, physical core count) from /proc/cpuinfo; platform fallbacks elsewhere."""
    model, cores = "", set()
    try:
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if key == "model name" and not model:
                model = val
            elif key == "physical id":
                phys = val
            elif key == "core id":
                core = val
            elif not key and core is not None:
                cores.add((phys, core))
                phys = core = None
        if core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), len(cores) or (os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo ('flags', or 'Features' on ARM); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


# the matrix instructions that decide the bf16 and int8 ceilings: /proc/cpuinfo flag -> the name people know
MATRIX_ISA = {"avx512_vnni": "AVX512-VNNI", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16",
              "avx512_bf16": "AVX512-BF16"}


def matrix_isa(flags: frozenset[str] | None = None) -> dict[str, bool]:
    """{'avx512_vnni', 'amx_int8', 'amx_bf16', 'avx512_bf16'} -> whether the CPU has it (from `flags`, default
    this CPU's)."""
    flags = cpu_flags() if flags is None else flags
    return {f: f in flags for f in MATRIX_ISA}


def last_level_cache_bytes() -> int | None:
    """Size of the highest-level CPU cache from sysfs (None where the kernel does not say)."""
    best = (0, None)
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((d / "level").read_text())
            size = (d / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(size[-1:], 1)
        num = int(size[:-1]) if size[-1:] in "KMG" else int(size)
        if level >= best[0]:
            best = (level, num * mult)
    return best[1]


def machine_info(device: str | torch.device | None = "cpu") -> dict[str, Any]:
    """What a measurement ran on: CPU model, cores, threads, torch version, and the GPU when device is CUDA."""
    dev = resolve_device(device)
    cpu, cores = _cpuinfo()
    info = dict(cpu_model=cpu, physical_cores=cores, logical_cpus=os.cpu_count(), threads=torch.get_num_threads(),
                torch_version=torch.__version__, python=platform.python_version(), os=platform.platform(),
                device=str(dev), device_name=cpu)
    if dev.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(dev)
        info["cuda_version"] = torch.version.cuda
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line: 'AMD EPYC (2 cores, 2 threads), torch 2.13.0+cpu, cpu'."""
    s = (f"{info['cpu_model']} ({info['physical_cores']} cores, {info['threads']} threads), "
         f"torch {info['torch_version']}")
    if str(info.get("device", "cpu")).startswith("cuda"):
        s += f", {info['device_name']}"
    return s
