"""Deployment transforms: structural re-parameterisation (more to come: quantisation, pruning, export)."""
from .reparam import reparameterize_model

__all__ = ["reparameterize_model"]
