"""The model zoo. Importing this package registers every family."""
from . import convnext, hornet, inception_next, metaformer, replknet, rmt, transnext, unireplknet  # noqa: F401  (registers models)
from .base import ConvScopeModel, Stage
from .features import FeatureExtractor, FeatureInfo, feature_take_indices
from .registry import (ArchSpec, Family, ModelCard, Paper, PretrainedCfg, UnknownModelError, create_model, family_of,
                       list_families, list_models, model_arch, model_card, register_family, resolve_model,
                       resolve_name, variant)
from .weights import load_checkpoint, read_state_dict, save_weights

__all__ = [
    "ArchSpec", "ConvScopeModel", "Family", "FeatureExtractor", "FeatureInfo", "ModelCard", "Paper", "PretrainedCfg",
    "Stage", "UnknownModelError", "create_model", "family_of", "feature_take_indices", "list_families",
    "list_models", "load_checkpoint", "model_arch", "model_card", "read_state_dict", "register_family",
    "resolve_model", "resolve_name", "save_weights", "variant",
]
