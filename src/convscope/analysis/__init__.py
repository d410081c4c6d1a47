"""The efficiency lab: exact counting (and, on other modules, timing, hardware ceilings, waterline analysis)."""
from .counting import CountResult, OpRecord, Totals, count, count_params

__all__ = ["CountResult", "OpRecord", "Totals", "count", "count_params"]
