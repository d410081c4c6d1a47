"""The model zoo. Importing this package registers every family."""
# importing a family file registers it
from . import (
    biformer,
    convit,
    convnext,
    crossvit,
    cvt,
    glnet,
    halonet,
    hornet,
    inception_next,
    lsnet,
    maxvit,
    metaformer,
    mixer_bench,
    moat,
    replknet,
    rmt,
    transnext,
    unireplknet,
    volo,
    wavemix,
)
from .base import ConvScopeModel, Stage
from .features import FeatureExtractor, FeatureInfo, feature_take_indices
from .registry import (
    ArchSpec,
    Card,
    Family,
    ModelCard,
    Paper,
    PretrainedCfg,
    UnknownModelError,
    create_model,
    family_of,
    list_families,
    list_models,
    model_arch,
    model_card,
    model_traits,
    register_family,
    resolve_model,
    resolve_name,
    variant,
)
from .traits import ModelTraits
from .weights import load_checkpoint, read_state_dict, save_weights

__all__ = [
    "ArchSpec", "Card", "ConvScopeModel", "Family", "FeatureExtractor", "FeatureInfo", "ModelCard", "ModelTraits",
    "Paper", "PretrainedCfg", "Stage", "UnknownModelError", "create_model", "family_of", "feature_take_indices",
    "list_families", "list_models", "load_checkpoint", "model_arch", "model_card", "model_traits", "read_state_dict",
    "register_family", "resolve_model", "resolve_name", "save_weights", "variant",
]

#: the family modules, imported for the families they register
FAMILY_MODULES = (
    biformer, convit, convnext, crossvit, cvt, glnet, halonet, hornet, inception_next, lsnet, maxvit, metaformer,
    mixer_bench, moat, replknet, rmt, transnext, unireplknet, volo, wavemix,
)
