"""Looking inside the models: class activation maps, effective receptive fields, relevance propagation, linear
probes, filter statistics and exact local linear maps, and their pictures (`page`: heat overlays and one
self-contained HTML page). Floor 5: imports models/ and the floors below it only."""
from .cam import CAM, METHODS, class_activation_map
from .erf import ERF, effective_receptive_field
from .filters import FilterStats, LayerFilters, filter_stats
from .linearscope import LinearMap, linear_map, occlusion
from .lrp import RULES, Relevance, check_conservation, lrp
from .probe import PROBES, ProbeResult, extract_features, linear_probe
from .taps import LayerTap, default_layer, resolve_layer

__all__ = ["CAM", "ERF", "METHODS", "PROBES", "RULES", "FilterStats", "LayerFilters", "LayerTap", "LinearMap",
           "ProbeResult", "Relevance", "check_conservation", "class_activation_map", "default_layer",
           "effective_receptive_field", "extract_features", "filter_stats", "linear_map", "linear_probe", "lrp",
           "occlusion", "resolve_layer"]
