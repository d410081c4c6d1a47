"""BatchNorm folding, and `prepare_for_inference`: the exact (float) deploy form of any model in the zoo.

`fold_batchnorm_(model)` folds, in place and children first, every eval-mode BatchNorm that sits next to a conv or
linear layer it can be folded into:

- in a plain `nn.Sequential`, a BatchNorm directly after a conv / linear layer, or directly before one without
  padding (the nn.Sequential rule of `convscope.layers.reparam`, shared);
- in a `ClassifierHead` (the head of the hierarchical models: pool -> norm -> dropout -> fc), a BatchNorm on the
  map before global average pooling or on the pooled vector, folded into the classifier `fc`: the mean over
  H x W commutes with a per-channel affine map, so `fc(mean(s * x + t)) = (fc.weight * s) mean(x) + fc(t)`
  (RepLKNet's head BatchNorm, which its official deploy form keeps);
- any module that declares its own `fold_batchnorm()` method (the hook for blocks that know the order of their
  layers; such a method works in place, is idempotent, and folds every BatchNorm child of the module, unless the
  module also declares `foldable_batchnorms()`, the names of those it folds: MaxViT's MBConv and stem, GLNet's
  final BatchNorm through pooling into the classifier).

A BatchNorm whose affine map no neighbouring layer can take exactly stays: before a zero-padded conv (the padded
zeros would have to become -shift/scale per channel), after a data-dependent operator that is not followed by a
linear layer (LSNet's SKA), after halo attention (its keys and values are zero-padded after the projection), or
on a residual stream (WaveMix's stem). docs/deploy.md lists those of the zoo; tests/deploy/zoo.py holds them.

The walk itself is `convscope.layers.fold` (below models/, which rebuilds a prepared model file with it); here
are the transforms. Blocks that fold BatchNorms as part of their `reparameterize()` (InceptionNeXt's BN -> fc1,
RepLKNet's pre-BN) are left to the re-parameterisation; `prepare_for_inference(model)` composes both:
re-parameterise, then fold what is left. Outputs equal the eval-mode outputs of the original up to float rounding
(tests: 1e-5 relative).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import nn

from ..layers.fold import batchnorm_folds, fold_batchnorm_, match_head_folds_, prepare_for_inference_
from ..layers.reparam import is_reparameterizable, match_reparam_form_
from .transform import ModelTransform, register_transform

_BN = nn.modules.batchnorm._BatchNorm


def remaining_batchnorms(model: nn.Module) -> list[str]:
    """BatchNorms still in `model` (e.g. after prepare_for_inference: those with no conv / linear to fold into)."""
    return [n for n, m in model.named_modules() if isinstance(m, _BN)]


class FoldBatchNorm(ModelTransform):
    """BatchNorm folded into the adjacent conv / linear layer (before or after it, and through global pooling)."""

    name = "fold_batchnorm"

    def apply(self, model: nn.Module) -> nn.Module:
        return fold_batchnorm_(model)

    def applies_to(self, model: nn.Module) -> bool:
        return bool(batchnorm_folds(model))

    def match_checkpoint(self, model: nn.Module, keys: Iterable[str]) -> nn.Module:
        return match_head_folds_(model, keys)


FOLD_BATCHNORM = register_transform(FoldBatchNorm())


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """A copy of `model` in its exact inference form (eval mode): parallel branches merged into single kernels and
    every BatchNorm next to a conv / linear layer folded into it. The original is left untouched."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"prepare_for_inference expects an nn.Module; got {type(model).__name__}")
    return prepare_for_inference_(copy.deepcopy(model))


class PrepareForInference(ModelTransform):
    """Re-parameterisation and BatchNorm folding together: the exact float deploy form."""

    name = "prepare"

    def apply(self, model: nn.Module) -> nn.Module:
        return prepare_for_inference_(model)

    def applies_to(self, model: nn.Module) -> bool:
        return is_reparameterizable(model) or bool(batchnorm_folds(model))

    def match_checkpoint(self, model: nn.Module, keys: Iterable[str]) -> nn.Module:
        return match_head_folds_(match_reparam_form_(model, keys), keys)


PREPARE = register_transform(PrepareForInference())
