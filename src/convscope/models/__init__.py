"""The model zoo. Importing this package registers every family."""
from . import convnext, hornet, inception_next, metaformer, replknet, unireplknet  # noqa: F401  (registers models)
from .base import ConvScopeModel, Stage
from .features import FeatureExtractor, FeatureInfo, feature_take_indices
from .registry import (ModelCard, UnknownModelError, create_model, list_families, list_models, model_card,
                       register_model, register_official_converter, resolve_model, resolve_name)
from .weights import load_checkpoint, read_state_dict, save_weights

__all__ = [
    "ConvScopeModel", "FeatureExtractor", "FeatureInfo", "ModelCard", "Stage", "UnknownModelError", "create_model",
    "feature_take_indices", "list_families", "list_models", "load_checkpoint", "model_card", "read_state_dict",
    "register_model", "register_official_converter", "resolve_model", "resolve_name", "save_weights",
]
