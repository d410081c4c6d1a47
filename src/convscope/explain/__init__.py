"""Looking inside the models: class activation maps, effective receptive fields, relevance propagation, linear
probes, filter statistics and exact local linear maps. Floor 4: imports models/, layers/, ops/, utils/ only."""
from .cam import CAM, METHODS, class_activation_map
from .erf import ERF, effective_receptive_field
from .taps import LayerTap, default_layer, resolve_layer

__all__ = ["CAM", "ERF", "METHODS", "LayerTap", "class_activation_map", "default_layer", "effective_receptive_field",
           "resolve_layer"]
