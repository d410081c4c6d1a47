"""This machine's ceilings: compute peak per dtype (large matrix products) and memory bandwidth (large copies).

The waterline / roofline analysis of Lavin et al. ("On the Efficiency of Convolutional Neural Networks", 2024)
bounds each kernel's latency by max(FLOPs / peak compute, bytes / peak bandwidth). The two peaks are measured
here, on the machine that runs the model, never taken from a data sheet:

- compute: `torch.mm` of square matrices of growing size, FLOPs = 2*M*N*K; for each size the median of a few
  timed runs after warm-up, and the peak is the best size's median.
- memory: `dst.copy_(src)` of buffers several times the last-level cache, bytes = read + write (2 x size);
  a second copy small enough to stay in the last-level cache gives the cache bandwidth (layers whose working
  set fits in cache can beat the DRAM bound).

Results are cached as JSON under ~/.cache/convscope (or $CONVSCOPE_CACHE_DIR), keyed by CPU/GPU model, thread
count, torch version and device, and reused unless `refresh=True`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_FORMAT = 1  # bump when the cached JSON layout changes


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


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) means CUDA when present, else CPU. ValueError for a device this machine lacks."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda'; got {device!r}")
    return dev


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
    s = f"{info['cpu_model']} ({info['physical_cores']} cores, {info['threads']} threads), torch {info['torch_version']}"
    if str(info.get("device", "cpu")).startswith("cuda"):
        s += f", {info['device_name']}"
    return s


# -- timing primitives --------------------------------------------------------------------------------------------
def _timer(dev: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function that runs `fn` once and returns its duration in seconds (CUDA events on a GPU)."""
    if dev.type == "cuda":
        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(dev)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return timed


def _median_time(fn: Callable[[], Any], timed, repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        timed(fn)
    times = [timed(fn) for _ in range(repeats)]
    return statistics.median(times), times


def measure_matmul(dtype: torch.dtype, device: str | torch.device = "cpu", *, sizes: Sequence[int] | None = None,
                   repeats: int = 5, warmup: int = 2, budget_s: float = 1.5) -> dict[str, Any] | None:
    """Peak GFLOP/s of square `torch.mm` in `dtype`: the best size's median, FLOPs = 2*n^3.

    Sizes grow until the next one would not fit in `budget_s` (predicted from the rate so far). Returns None
    when the dtype has no matrix product on this device.
    """
    dev = resolve_device(device)
    sizes = sizes or ((256, 512, 1024, 2048) if dev.type == "cpu" else (1024, 2048, 4096, 8192))
    timed = _timer(dev)
    spent, rate, runs = 0.0, None, []
    for n in sizes:
        flops = 2.0 * n ** 3
        if rate is not None and spent + (repeats + warmup) * flops / rate > budget_s:
            break
        try:
            a = torch.randn(n, n, device=dev).to(dtype)
            b = torch.randn(n, n, device=dev).to(dtype)
            c = torch.empty(n, n, device=dev, dtype=dtype)
            t0 = time.perf_counter()
            med, times = _median_time(lambda: torch.mm(a, b, out=c), timed, repeats, warmup)
            spent += time.perf_counter() - t0
        except RuntimeError:
            return None
        rate = flops / min(times)  # predicts the next size's cost; the peak itself is a median
        runs.append(dict(n=n, median_s=med, min_s=min(times), gflops=flops / med / 1e9))
        del a, b, c
    best = max(runs, key=lambda r: r["gflops"])
    return dict(gflops=best["gflops"], n=best["n"], runs=runs)


def measure_copy(nbytes: int, device: str | torch.device = "cpu", *, repeats: int = 7,
                 warmup: int = 2) -> dict[str, Any]:
    """GB/s of `dst.copy_(src)` for float32 buffers of `nbytes` each, counting read + write (2 x nbytes)."""
    dev = resolve_device(device)
    n = max(nbytes // 4, 1024)
    src = torch.ones(n, device=dev)
    dst = torch.zeros(n, device=dev)
    med, times = _median_time(lambda: dst.copy_(src), _timer(dev), repeats, warmup)
    return dict(gbs=2 * 4 * n / med / 1e9, buffer_bytes=4 * n, median_s=med, min_s=min(times))


# -- the result ---------------------------------------------------------------------------------------------------
@dataclass
class HardwarePeaks:
    """Measured ceilings of one machine (device + thread count + torch build).

    `compute_gflops` maps 'fp32' / 'bf16' / 'fp16' to the matrix-product peak in GFLOP/s (a dtype is absent when
    the device has no matrix product for it). `bandwidth_gbs` is the DRAM copy bandwidth (read + write) in GB/s;
    `cache_bandwidth_gbs` the same for a working set that fits in the last-level cache (CPU only).
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

    def peak_flops(self, dtype: torch.dtype | str = "fp32") -> float:
        """Compute ceiling in FLOP/s for `dtype` (ValueError when it was not measured)."""
        name = dtype_name(dtype)
        if name not in self.compute_gflops:
            raise ValueError(f"no {name} compute peak was measured on {self.machine.get('device_name')}; "
                             f"measured: {', '.join(self.compute_gflops)}")
        return self.compute_gflops[name] * 1e9

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
    def from_dict(cls, d: dict[str, Any]) -> "HardwarePeaks":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(dict(self.to_dict(), format=_FORMAT), indent=1)
        if path is not None:
            _atomic_write(Path(path), text)
        return text

    def summary(self) -> str:
        lines = [describe_machine(self.machine)]
        for name, g in self.compute_gflops.items():
            lines.append(f"  compute {name:>4}: {g:9.1f} GFLOP/s  (matrix product, n={self.details[name]['n']})")
        lines.append(f"  DRAM bandwidth: {self.bandwidth_gbs:7.1f} GB/s   (copy, read + write, "
                     f"{self.details['bandwidth']['buffer_bytes'] / 2 ** 20:.0f} MiB buffers)")
        if self.cache_bandwidth_gbs:
            lines.append(f"  cache bandwidth:{self.cache_bandwidth_gbs:7.1f} GB/s   (copy within the "
                         f"{(self.llc_bytes or 0) / 2 ** 20:.0f} MiB last-level cache)")
        lines.append(f"  ridge point fp32: {self.ridge_point('fp32'):.1f} FLOP/byte")
        when = "cached from " + self.measured_at if self.cached else f"measured in {self.duration_s:.1f} s"
        lines.append(f"  ({when})")
        return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cache_dir() -> Path:
    """$CONVSCOPE_CACHE_DIR, else $XDG_CACHE_HOME/convscope, else ~/.cache/convscope."""
    if os.environ.get("CONVSCOPE_CACHE_DIR"):
        return Path(os.environ["CONVSCOPE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "convscope"


def _cache_key(machine: dict[str, Any]) -> str:
    ident = "|".join(str(machine[k]) for k in ("cpu_model", "threads", "torch_version", "device", "device_name"))
    return hashlib.sha1(ident.encode()).hexdigest()[:12]


def hardware_peaks(device: str | torch.device | None = "auto", *, threads: int | None = None,
                   dtypes: Sequence[str] = ("fp32", "bf16", "fp16"), refresh: bool = False,
                   cache: bool = True, budget_s: float = 1.5) -> HardwarePeaks:
    """Measure (or load from the cache) this machine's compute peaks and memory bandwidth.

    device: 'auto' (CUDA when present), 'cpu' or 'cuda'. threads: torch intra-op threads for the measurement
    (default: the current setting; part of the cache key). dtypes: which compute peaks to measure; a dtype
    without a matrix product on this device is left out. budget_s: time allowed per dtype. The whole measurement
    takes a few seconds; later calls read ~/.cache/convscope/hardware-<key>.json unless `refresh`.
    """
    dev = resolve_device(device)
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        raise ValueError(f"dtypes must be a non-empty subset of {', '.join(DTYPES)}; got {list(dtypes)}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1; got {threads}")
        torch.set_num_threads(threads)
    try:
        machine = machine_info(dev)
        key = _cache_key(machine)
        path = cache_dir() / f"hardware-{key}.json"
        if cache and not refresh and path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("format") == _FORMAT and all(d in data["compute_gflops"] or d in data["details"].get(
                        "unsupported", []) for d in dtypes):
                    peaks = HardwarePeaks.from_dict(data)
                    peaks.cached = True
                    return peaks
            except (ValueError, KeyError, TypeError):
                pass  # a corrupt or old cache file is measured again and overwritten
        peaks = _measure(dev, machine, dtypes, budget_s)
        peaks.key = key
        if cache:
            peaks.to_json(path)
        return peaks
    finally:
        torch.set_num_threads(old_threads)


def _measure(dev: torch.device, machine: dict[str, Any], dtypes: Sequence[str], budget_s: float) -> HardwarePeaks:
    t0 = time.perf_counter()
    details: dict[str, Any] = {"unsupported": []}
    compute = {}
    for name in dtypes:
        r = measure_matmul(DTYPES[name], dev, budget_s=budget_s)
        if r is None:
            details["unsupported"].append(name)
            continue
        compute[name] = r["gflops"]
        details[name] = r
    if dev.type == "cuda":
        dram = 1 << 30
        llc = None
    else:
        llc = last_level_cache_bytes()
        dram = min(max(4 * (llc or 64 << 20), 64 << 20), 1 << 30)
    bw = measure_copy(dram, dev)
    details["bandwidth"] = bw
    cache_bw = None
    if llc:
        cb = measure_copy(llc // 4, dev, repeats=15, warmup=3)
        details["cache_bandwidth"] = cb
        cache_bw = cb["gbs"]
    return HardwarePeaks(machine=machine, compute_gflops=compute, bandwidth_gbs=bw["gbs"],
                         cache_bandwidth_gbs=cache_bw, llc_bytes=llc, details=details,
                         measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         duration_s=time.perf_counter() - t0)
