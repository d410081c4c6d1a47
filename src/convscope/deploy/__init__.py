"""Deployment transforms, each an instance of the `ModelTransform` protocol (deploy/transform.py):
structural re-parameterisation, materialised generated kernels; BN folding, int8, pruning and export next."""
from .materialize import MATERIALIZE, Materialize, materialize_
from .reparam import REPARAMETERIZE, Reparameterize, is_reparameterizable, match_reparam_form_, reparameterize_, \
    reparameterize_model
from .transform import TRANSFORMS, ModelTransform, get_transform, register_transform, transform

__all__ = ["MATERIALIZE", "Materialize", "REPARAMETERIZE", "Reparameterize", "TRANSFORMS", "ModelTransform", "get_transform",
           "is_reparameterizable", "match_reparam_form_", "register_transform", "reparameterize_",
           "materialize_", "reparameterize_model", "transform"]
