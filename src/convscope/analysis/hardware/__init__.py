"""This machine's ceilings: compute peak per dtype (large matrix products) and memory bandwidth (large copies).

The waterline / roofline analysis of Lavin et al. ("On the Efficiency of Convolutional Neural Networks", 2024)
bounds each kernel's latency by max(FLOPs / peak compute, bytes / peak bandwidth). The two peaks are measured
here, on the machine that runs the model, never taken from a data sheet:

- compute: `torch.mm` of square matrices of growing size, FLOPs = 2*M*N*K; on CPUs also a dense 3x3
  convolution (an implicit matrix product, FLOPs = 2*M*N*K as well), because torch runs it with oneDNN, which
  can beat the BLAS behind `torch.mm`. The ceiling is the faster of the two probes. int8: the oneDNN int8
  product the compiled int8 deploy form runs (`onednn.qlinear_pointwise`, VNNI / AMX-INT8), in ops/s.
- memory: `dst.copy_(src)` of buffers several times the last-level cache, bytes = read + write (2 x size);
  a second copy small enough to stay in the last-level cache gives the cache bandwidth (layers whose working
  set fits in cache can beat the DRAM bound).

Each size is timed a few times after warm-up; the median and the best run are both recorded, and a ceiling
is the best run. Other processes can only add time to a run, so the best run is the closest estimate of what
the hardware can do, while the medians (in `details`) show how much a busy machine took away. Model and layer
latencies elsewhere in the lab are medians: typical times, compared against these attainable ceilings.

Results are cached as JSON under ~/.cache/convscope (or $CONVSCOPE_CACHE_DIR), keyed by CPU/GPU model, thread
count, torch version and device, and reused unless `refresh=True`.
"""
from .machine import (
    DTYPES,
    MATRIX_ISA,
    cpu_flags,
    describe_machine,
    dtype_name,
    last_level_cache_bytes,
    machine_info,
    matrix_isa,
)
from .peaks import PEAK_DTYPES, HardwarePeaks, cache_dir, hardware_peaks, peak_dtype_name
from .timers import PeakMemory, measure_conv, measure_copy, measure_int8, measure_matmul, wall_timer

__all__ = ["DTYPES", "MATRIX_ISA", "PEAK_DTYPES", "HardwarePeaks", "PeakMemory", "cache_dir", "cpu_flags",
           "describe_machine", "dtype_name", "hardware_peaks", "last_level_cache_bytes", "machine_info", "matrix_isa",
           "measure_conv", "measure_copy", "measure_int8", "measure_matmul", "peak_dtype_name", "wall_timer"]
