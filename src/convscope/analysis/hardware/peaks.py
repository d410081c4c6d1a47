"""The measured peaks (`HardwarePeaks`) and their cache: JSON under ~/.cache/convscope (or $CONVSCOPE_CACHE_DIR),
keyed by the machine, measured once under a file lock and reused unless refreshed; and the ceilings that look
implausible (`HardwarePeaks.implausible`)."""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...files import atomic_write_text
from ...utils import resolve_device, threads_set
from .machine import DTYPES, MATRIX_ISA, describe_machine, dtype_name, last_level_cache_bytes, machine_info, matrix_isa
from .timers import measure_conv, measure_copy, measure_int8, measure_matmul

_FORMAT = 3  # bump when the cached JSON layout changes
PEAK_DTYPES = (*DTYPES, "int8")  # the compute peaks `hardware_peaks` can measure
_PROBES = ("matmul", "conv3x3", "qlinear")


def peak_dtype_name(dtype: torch.dtype | str) -> str:
    """'fp32' / 'bf16' / 'fp16' / 'int8' for a torch dtype or one of those names (ValueError otherwise)."""
    return "int8" if dtype in ("int8", torch.int8) else dtype_name(dtype)


# -- the result ---------------------------------------------------------------------------------------------------
@dataclass
class HardwarePeaks:
    """Measured ceilings of one machine (device + thread count + torch build).

    `compute_gflops` maps 'fp32' / 'bf16' / 'fp16' to the best dense-kernel rate in GFLOP/s, and 'int8' to the
    rate of the oneDNN int8 product the int8 deploy form runs, in GOP/s (a dtype is absent when the device has no
    matrix product for it). `bandwidth_gbs` is the DRAM copy bandwidth (read + write) in GB/s;
    `cache_bandwidth_gbs` the same for a working set that fits in the last-level cache (CPU only). `isa`: whether
    the CPU has each of AVX512-VNNI, AMX-INT8, AMX-BF16 and AVX512-BF16 (/proc/cpuinfo flag -> bool).
    """

    machine: dict[str, Any]
    compute_gflops: dict[str, float]
    bandwidth_gbs: float
    cache_bandwidth_gbs: float | None = None
    llc_bytes: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    measured_at: str = ""
    duration_s: float = 0.0
    key: str = ""
    cached: bool = False
    isa: dict[str, bool] = field(default_factory=dict)

    def peak_flops(self, dtype: torch.dtype | str = "fp32") -> float:
        """Compute ceiling in FLOP/s (int8: ops/s) for `dtype` (ValueError when it was not measured)."""
        name = peak_dtype_name(dtype)
        if name not in self.compute_gflops:
            raise ValueError(f"no {name} compute peak was measured on {self.machine.get('device_name')}; "
                             f"measured: {', '.join(self.compute_gflops)}")
        return self.compute_gflops[name] * 1e9

    def probe_gflops(self) -> dict[str, dict[str, float]]:
        """dtype -> {probe kernel ('matmul', 'conv3x3', 'qlinear') -> its best GFLOP/s}; the ceiling is the
        largest."""
        return {name: {k: self.details[name][k]["gflops"] for k in _PROBES if k in self.details[name]}
                for name in self.compute_gflops}

    @property
    def bandwidth(self) -> float:
        """DRAM bandwidth ceiling in bytes/s."""
        return self.bandwidth_gbs * 1e9

    def ridge_point(self, dtype: torch.dtype | str = "fp32") -> float:
        """Arithmetic intensity (FLOP/byte) where the compute roof meets the bandwidth slope."""
        return self.peak_flops(dtype) / self.bandwidth

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HardwarePeaks:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(dict(self.to_dict(), format=_FORMAT), indent=1)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def implausible(self) -> list[str]:
        """One line per measured ceiling that cannot be right on this machine: the checks every stored profile
        gets (`ceilings.ceiling_warnings`: cache bandwidth below DRAM's, a load average above the CPUs while
        measuring), then bf16 below fp32 on a CPU with AMX-BF16 and int8 below fp32 on one with VNNI or AMX-INT8."""
        from ..ceilings import ceiling_warnings

        out, g = [], self.compute_gflops
        if self.isa.get("amx_bf16") and "bf16" in g and "fp32" in g and g["bf16"] < g["fp32"]:
            out.append(f"bf16 peak {g['bf16']:.1f} GFLOP/s is below fp32 {g['fp32']:.1f} on a CPU with AMX-BF16")
        if (self.isa.get("avx512_vnni") or self.isa.get("amx_int8")) and "int8" in g and "fp32" in g \
                and g["int8"] < g["fp32"]:
            out.append(f"int8 peak {g['int8']:.1f} GOP/s is below fp32 {g['fp32']:.1f} GFLOP/s on a CPU with "
                       f"{'AMX-INT8' if self.isa.get('amx_int8') else 'AVX512-VNNI'}")
        stored = dict(bandwidth_gbs=self.bandwidth_gbs, cache_bandwidth_gbs=self.cache_bandwidth_gbs,
                      load_average=self.details.get("busy", {}).get("load_average"))
        return ceiling_warnings(stored, self.machine.get("logical_cpus")) + out

    def summary(self) -> str:
        lines = [describe_machine(self.machine)]
        if self.isa:
            lines.append("  ISA: " + ", ".join(f"{MATRIX_ISA[f]} {'yes' if self.isa.get(f) else 'no'}"
                                               for f in MATRIX_ISA))
        for name, g in self.compute_gflops.items():
            d = self.details[name]
            probes = ", ".join(f"{k} {d[k]['gflops']:.1f}" for k in _PROBES if k in d)
            slow = "fp32" in self.compute_gflops and name not in ("fp32", "int8") \
                and g < 0.1 * self.compute_gflops["fp32"]
            unit = "GOP/s  " if name == "int8" else "GFLOP/s"
            lines.append(f"  compute {name:>4}: {g:9.1f} {unit}  (best of {probes})"
                         + ("  far below fp32: no fast kernels for this dtype here" if slow else ""))
        lines.append(f"  DRAM bandwidth: {self.bandwidth_gbs:7.1f} GB/s   (copy, read + write, "
                     f"{self.details['bandwidth']['buffer_bytes'] / 2 ** 20:.0f} MiB buffers)")
        if self.cache_bandwidth_gbs:
            lines.append(f"  cache bandwidth:{self.cache_bandwidth_gbs:7.1f} GB/s   (copy within the "
                         f"{(self.llc_bytes or 0) / 2 ** 20:.0f} MiB last-level cache)")
        lines.append(f"  ridge point fp32: {self.ridge_point('fp32'):.1f} FLOP/byte")
        when = "cached from " + self.measured_at if self.cached else f"measured in {self.duration_s:.1f} s"
        busy = self.details.get("busy", {}).get("other_cores_busy")
        if busy is not None:
            when += f"; other processes kept {busy:.2f} cores busy meanwhile"
            if busy >= 0.25:
                when += " (the peaks may be low: `convscope hw --refresh` on an idle machine)"
        lines.append(f"  ({when})")
        lines += [f"  warning: implausible ceiling: {w}" + ("" if "--refresh" in w else
                  " (re-measure on an idle machine: `convscope hw --refresh`)") for w in self.implausible()]
        return "\n".join(lines)


def cache_dir() -> Path:
    """$CONVSCOPE_CACHE_DIR, else $XDG_CACHE_HOME/convscope, else ~/.cache/convscope."""
    if os.environ.get("CONVSCOPE_CACHE_DIR"):
        return Path(os.environ["CONVSCOPE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "convscope"


def _cache_key(machine: dict[str, Any]) -> str:
    ident = "|".join(str(machine[k]) for k in ("cpu_model", "threads", "torch_version", "device", "device_name"))
    return hashlib.sha1(ident.encode()).hexdigest()[:12]


def hardware_peaks(device: str | torch.device | None = "auto", *, threads: int | None = None,
                   dtypes: Sequence[str] = PEAK_DTYPES, refresh: bool = False,
                   cache: bool = True, budget_s: float = 0.75) -> HardwarePeaks:
    """Measure (or load from the cache) this machine's compute peaks and memory bandwidth.

    device: 'auto' (CUDA when present), 'cpu' or 'cuda'. threads: torch intra-op threads for the measurement
    (default: the current setting; part of the cache key). dtypes: which compute peaks to measure; a dtype
    without a matrix product on this device is left out; 'int8' times the oneDNN int8 product the int8 deploy form
    runs (CPU only). budget_s: time allowed per probe. The whole measurement
    takes a few seconds; later calls read ~/.cache/convscope/hardware-<key>.json unless `refresh`.
    """
    dev = resolve_device(device)
    unknown = [d for d in dtypes if d not in PEAK_DTYPES]
    if unknown or not dtypes:
        raise ValueError(f"dtypes must be a non-empty subset of {', '.join(PEAK_DTYPES)}; got {list(dtypes)}")
    with threads_set(threads):
        machine = machine_info(dev)
        key = _cache_key(machine)
        directory = cache_dir()
        path = directory / f"hardware-{key}.json"
        if cache and directory.exists() and not directory.is_dir():
            raise ValueError(f"the cache directory {directory} is a file; remove it or set CONVSCOPE_CACHE_DIR")
        if cache and not refresh:
            peaks = _read_cache(path, dtypes)
            if peaks is not None:
                return peaks
        if not cache:
            peaks = _measure(dev, machine, dtypes, budget_s)
            peaks.key = key
            return peaks
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the cache directory {directory}: {e}") from None
        # One measurement at a time per machine key: a second `convscope hw` waits for the first (instead of
        # measuring against it) and then reads what it wrote.
        with _locked(directory / f"hardware-{key}.lock"):
            if not refresh:
                peaks = _read_cache(path, dtypes)
                if peaks is not None:
                    return peaks
            peaks = _measure(dev, machine, dtypes, budget_s)
            peaks.key = key
            peaks.to_json(path)
        return peaks


def _read_cache(path: Path, dtypes: Sequence[str]) -> HardwarePeaks | None:
    """The cached peaks if the file is there, of this format, of the right shape and holds `dtypes`; else None
    (a corrupt, old or hand-edited file is measured again and overwritten)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            return None
        compute, details = data["compute_gflops"], data["details"]
        if not (isinstance(compute, dict) and isinstance(details, dict) and isinstance(details.get("bandwidth"), dict)
                and all(isinstance(v, (int, float)) and v > 0 for v in compute.values())
                and isinstance(data["bandwidth_gbs"], (int, float)) and data["bandwidth_gbs"] > 0
                and isinstance(data["machine"], dict)
                and all(isinstance(details.get(n), dict) for n in compute)):
            return None
        if not all(d in compute or d in details.get("unsupported", []) for d in dtypes):
            return None
        peaks = HardwarePeaks.from_dict(data)
        peaks.cached = True
        return peaks
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on `path` (fcntl; a no-op where there is none)."""
    try:
        import fcntl
    except ImportError:   # not POSIX
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)
    except (OSError, ValueError, IndexError):
        return None


def _measure(dev: torch.device, machine: dict[str, Any], dtypes: Sequence[str], budget_s: float) -> HardwarePeaks:
    t0 = time.perf_counter()
    ticks0, own0 = _cpu_ticks(), os.times()
    details: dict[str, Any] = {"unsupported": []}
    compute = {}
    for name in dtypes:
        if name == "int8":
            probes = {"qlinear": measure_int8(dev, budget_s=budget_s)}
        else:
            probes = {"matmul": measure_matmul(DTYPES[name], dev, budget_s=budget_s)}
        if dev.type == "cpu" and name != "int8":
            probes["conv3x3"] = measure_conv(DTYPES[name], dev, budget_s=budget_s)
        probes = {k: v for k, v in probes.items() if v is not None}
        if not probes:
            details["unsupported"].append(name)
            continue
        kernel = max(probes, key=lambda k: probes[k]["gflops"])
        compute[name] = probes[kernel]["gflops"]
        details[name] = dict(kernel=kernel, **probes)
    if dev.type == "cuda":
        dram = 1 << 30
        llc = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", None)
    else:
        llc = last_level_cache_bytes()
        dram = min(max(4 * (llc or 64 << 20), 64 << 20), 1 << 30)
    bw = measure_copy(dram, dev)
    details["bandwidth"] = bw
    cache_bw = None
    if llc and dev.type == "cpu":
        cb = measure_copy(llc // 4, dev, repeats=15, warmup=3)
        details["cache_bandwidth"] = cb
        cache_bw = cb["gbs"]
    details["busy"] = _busy_during(ticks0, own0, time.perf_counter() - t0)
    return HardwarePeaks(machine=machine, compute_gflops=compute, bandwidth_gbs=bw["gbs"],
                         cache_bandwidth_gbs=cache_bw, llc_bytes=llc, details=details, isa=matrix_isa(),
                         measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         duration_s=time.perf_counter() - t0)


def _busy_during(ticks0: tuple[int, int] | None, own0: os.times_result, seconds: float) -> dict[str, Any]:
    """How busy the machine was with other work while it was measured: the cores other processes kept busy (from
    /proc/stat, less this process's own CPU time), and the load averages. The peaks of a busy machine are low."""
    ticks1, own1 = _cpu_ticks(), os.times()
    out: dict[str, Any] = {"load_average": [round(x, 2) for x in os.getloadavg()]} if hasattr(os, "getloadavg") else {}
    if ticks0 is not None and ticks1 is not None and ticks1[1] > ticks0[1]:
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy_s = (ticks1[0] - ticks0[0]) / hz
        own_s = (own1.user + own1.system) - (own0.user + own0.system)
        out["other_cores_busy"] = round(max(busy_s - own_s, 0.0) / max(seconds, 1e-9), 2)
    return out
