"""The efficiency lab: exact counting (MACs, FLOPs, bytes, activations), fidelity to the official MACs, and the
model-scaling rules of "Fast and Accurate Model Scaling"."""
from .counting import MACS_CONVENTIONS, CountResult, OpRecord, Totals, count, count_params
from .fidelity import MACS_EXCEPTIONS, MacsFidelity, fidelity_table, macs_fidelity
from .scaling import RULES, ScaledConfig, activation_exponent, scale, scaling_exponents, scaling_factors

__all__ = ["CountResult", "MACS_CONVENTIONS", "MACS_EXCEPTIONS", "MacsFidelity", "OpRecord", "RULES", "ScaledConfig",
           "Totals", "activation_exponent", "count", "count_params", "fidelity_table", "macs_fidelity", "scale",
           "scaling_exponents", "scaling_factors"]
