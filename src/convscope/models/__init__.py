"""The model zoo. Importing this package registers every family."""
from . import (
                       biformer,  # noqa: F401  (importing a family file registers it)
                       convit,  # noqa: F401  (importing a family file registers it)
                       convnext,  # noqa: F401  (importing a family file registers it)
                       crossvit,  # noqa: F401  (importing a family file registers it)
                       cvt,  # noqa: F401  (importing a family file registers it)
                       glnet,  # noqa: F401  (importing a family file registers it)
                       halonet,  # noqa: F401  (importing a family file registers it)
                       hornet,  # noqa: F401  (importing a family file registers it)
                       inception_next,  # noqa: F401  (importing a family file registers it)
                       lsnet,  # noqa: F401  (importing a family file registers it)
                       maxvit,  # noqa: F401  (importing a family file registers it)
                       metaformer,  # noqa: F401  (importing a family file registers it)
                       mixer_bench,  # noqa: F401  (importing a family file registers it)
                       moat,  # noqa: F401  (importing a family file registers it)
                       replknet,  # noqa: F401  (importing a family file registers it)
                       rmt,  # noqa: F401  (importing a family file registers it)
                       transnext,  # noqa: F401  (importing a family file registers it)
                       unireplknet,  # noqa: F401  (importing a family file registers it)
                       volo,  # noqa: F401  (importing a family file registers it)
                       wavemix,  # noqa: F401  (importing a family file registers it)
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
    "register_family",
    "resolve_model", "resolve_name", "save_weights", "variant",
]
