"""Deployment transforms, each an instance of the `ModelTransform` protocol (deploy/transform.py): structural
re-parameterisation (reparam.py), materialised generated kernels (materialize.py), BatchNorm folding and
`prepare_for_inference` (fold.py); int8 quantisation (quantize.py), structured pruning (prune.py), export
(export.py) and the optimiser (optimize.py) load their optional dependencies when called."""
from ..layers.fold import batchnorm_folds, fold_batchnorm_, prepare_for_inference_
from ..layers.reparam import is_reparameterizable, match_reparam_form_, reparameterize_, reparameterize_model
from .fold import FOLD_BATCHNORM, PREPARE, FoldBatchNorm, prepare_for_inference, remaining_batchnorms
from .materialize import MATERIALIZE, Materialize, materialize_
from .reparam import REPARAMETERIZE, Reparameterize
from .transform import TRANSFORMS, ModelTransform, get_transform, register_transform, transform

__all__ = ["FOLD_BATCHNORM", "FoldBatchNorm", "MATERIALIZE", "Materialize", "PREPARE", "REPARAMETERIZE",
           "Reparameterize", "TRANSFORMS", "ModelTransform", "batchnorm_folds", "fold_batchnorm_", "get_transform",
           "is_reparameterizable", "match_reparam_form_", "materialize_", "prepare_for_inference",
           "prepare_for_inference_", "register_transform", "remaining_batchnorms", "reparameterize_",
           "reparameterize_model", "transform"]
