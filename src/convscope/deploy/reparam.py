"""`reparameterize_model`: the deploy form of a model, as a copy.

The work is done by `convscope.layers.reparam.reparameterize_` (which models/ can use too, e.g. for
`create_model(name, deploy=True)`); see that module for the protocol every re-parameterisable module follows.
"""
from __future__ import annotations

import copy

from torch import nn

from ..layers.reparam import reparameterize_


def reparameterize_model(model: nn.Module) -> nn.Module:
    """A deploy-form copy of `model`, in eval mode: parallel branches merged into single kernels and every
    BatchNorm beside a conv folded into it. `model` itself is left untouched; the copy's outputs equal the
    original's eval-mode outputs (up to floating-point rounding)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"reparameterize_model expects an nn.Module; got {type(model).__name__}")
    return reparameterize_(copy.deepcopy(model)).eval()
