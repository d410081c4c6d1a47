"""The model zoo. Importing this package registers every family."""
from . import biformer  # noqa: F401  (importing a family file registers it)
from . import convit  # noqa: F401  (importing a family file registers it)
from . import convnext  # noqa: F401  (importing a family file registers it)
from . import crossvit  # noqa: F401  (importing a family file registers it)
from . import cvt  # noqa: F401  (importing a family file registers it)
from . import glnet  # noqa: F401  (importing a family file registers it)
from . import halonet  # noqa: F401  (importing a family file registers it)
from . import hornet  # noqa: F401  (importing a family file registers it)
from . import inception_next  # noqa: F401  (importing a family file registers it)
from . import lsnet  # noqa: F401  (importing a family file registers it)
from . import maxvit  # noqa: F401  (importing a family file registers it)
from . import metaformer  # noqa: F401  (importing a family file registers it)
from . import mixer_bench  # noqa: F401  (importing a family file registers it)
from . import moat  # noqa: F401  (importing a family file registers it)
from . import replknet  # noqa: F401  (importing a family file registers it)
from . import rmt  # noqa: F401  (importing a family file registers it)
from . import transnext  # noqa: F401  (importing a family file registers it)
from . import unireplknet  # noqa: F401  (importing a family file registers it)
from . import volo  # noqa: F401  (importing a family file registers it)
from . import wavemix  # noqa: F401  (importing a family file registers it)
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
