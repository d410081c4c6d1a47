"""The efficiency lab: exact counting (MACs, FLOPs, bytes, activations), fidelity to the official MACs, and the
model-scaling rules of "Fast and Accurate Model Scaling"."""
from .counting import MACS_CONVENTIONS, CountResult, OpRecord, Totals, count, count_params
from .fidelity import MACS_EXCEPTIONS, MacsFidelity, fidelity_table, macs_fidelity
from .scaling import RULES, ScaledConfig, activation_exponent, scale, scaling_exponents, scaling_factors, scaling_table

__all__ = ["CountResult", "MACS_CONVENTIONS", "MACS_EXCEPTIONS", "MacsFidelity", "OpRecord", "RULES", "ScaledConfig",
           "Totals", "activation_exponent", "count", "count_params", "fidelity_table", "macs_fidelity", "scale",
           "scaling_exponents", "scaling_factors", "scaling_table"]

# efficiency lab: this machine's ceilings, timing and per-layer waterline analysis (charts and HTML reports are in
# `analysis.plots` and `analysis.report`, which need matplotlib)
from .hardware import HardwarePeaks, hardware_peaks, machine_info  # noqa: E402
from .timing import BenchmarkResult, LatencyStats, benchmark, measure_interleaved  # noqa: E402
from .waterline import Comparison, LayerProfile, compare_models, profile_layers, waterline_bound  # noqa: E402

__all__ += ["BenchmarkResult", "Comparison", "HardwarePeaks", "LatencyStats", "LayerProfile", "benchmark",
            "compare_models", "hardware_peaks", "machine_info", "measure_interleaved", "profile_layers",
            "waterline_bound"]
