"""Structural re-parameterisation: turning a network's train-time form into an equivalent deploy form.

The protocol, for the whole library:

- A module with a train-time multi-branch form (parallel kernels, as in RepLKNet and UniRepLKNet) or with
  BatchNorm beside one of its own convs implements `reparameterize()`. The method works in place, leaves a
  module whose eval-mode outputs are unchanged, and is idempotent: a second call changes nothing. A block knows
  the order of its own layers, so it is the block that folds its BatchNorms (e.g. InceptionNeXt's
  BN -> 1x1 fc1, RepLKNet's pre-BN -> 1x1 pw1); it first re-parameterises its own children.
- A plain `nn.Sequential` (one whose forward is `nn.Sequential.forward`) needs no method: `reparameterize_`
  folds each BatchNorm that directly follows a conv / linear layer into it, and each BatchNorm that directly
  precedes a conv / linear layer without padding into that layer (InceptionNeXt's stem conv -> BN and its
  downsampling BN -> 2x2 conv). A BatchNorm is never folded into a zero-padded conv that follows it: the padded
  zeros would not receive the BatchNorm's shift. Folded BatchNorms become `nn.Identity`.

The kernel and BatchNorm arithmetic and the walk are in `convscope.layers.reparam` (below models/, which builds
the deploy form with them): `reparameterize_(model)` applies all of this in place, children before parents, and
`reparameterize_model` returns a deploy-form copy; `REPARAMETERIZE` here is the same as a deploy transform. The
deploy form is for inference: BatchNorm is folded with its running statistics, i.e. its eval-mode behaviour.
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..layers.reparam import is_reparameterizable, match_reparam_form_, reparameterize_
from .transform import ModelTransform, register_transform


class Reparameterize(ModelTransform):
    """Structural re-parameterisation as a deploy transform: merged kernels, BatchNorms folded into convs."""

    name = "reparameterize"

    def apply(self, model: nn.Module) -> nn.Module:
        return reparameterize_(model)

    def applies_to(self, model: nn.Module) -> bool:
        return is_reparameterizable(model)

    def match_checkpoint(self, model: nn.Module, keys: Iterable[str]) -> nn.Module:
        return match_reparam_form_(model, keys)


REPARAMETERIZE = register_transform(Reparameterize())
