"""BatchNorm folding, and `prepare_for_inference`: the exact (float) deploy form of any model in the zoo.

`fold_batchnorm_(model)` folds, in place and children first, every eval-mode BatchNorm that sits next to a conv or
linear layer it can be folded into:

- in a plain `nn.Sequential`, a BatchNorm directly after a conv / linear layer, or directly before one without
  padding (the rule of `convscope.deploy.reparam`, shared);
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

Blocks that fold BatchNorms as part of their `reparameterize()` (InceptionNeXt's BN -> fc1, RepLKNet's pre-BN)
are left to the re-parameterisation; `prepare_for_inference(model)` composes both: re-parameterise, then fold
what is left. Outputs equal the eval-mode outputs of the original up to float rounding (tests: 1e-5 relative).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import nn

from ..layers.classifier import ClassifierHead
from ..layers.reparam import bn_affine, fuse_affine_before_
from .reparam import _children_first, _plain_sequential, fold_sequential_, reparameterize_, sequential_bn_folds
from .transform import ModelTransform, register_transform

_BN = nn.modules.batchnorm._BatchNorm


def _head_bn_foldable(m: nn.Module) -> bool:
    return (isinstance(m, ClassifierHead) and type(m.norm) in (nn.BatchNorm1d, nn.BatchNorm2d)
            and m.norm.running_mean is not None and isinstance(m.fc, nn.Linear))


def _fold_head_(head: ClassifierHead) -> int:
    """BatchNorm (before or after global pooling) -> dropout -> Linear: the BatchNorm folds into the Linear."""
    fuse_affine_before_(head.fc, *bn_affine(head.norm))
    head.norm = nn.Identity()
    return 1


def batchnorm_folds(model: nn.Module) -> list[str]:
    """Names of the BatchNorms `fold_batchnorm_` would fold (works on the meta device)."""
    out = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if callable(getattr(m, "foldable_batchnorms", None)):
            out += [f"{prefix}{n}" for n in m.foldable_batchnorms()]
        elif callable(getattr(m, "fold_batchnorm", None)):
            out += [f"{prefix}{n}" for n, c in m.named_children() if isinstance(c, _BN)]
        elif _plain_sequential(m):
            out += [f"{prefix}{bn}" for bn, _, _ in sequential_bn_folds(m)]
        elif _head_bn_foldable(m):
            out.append(f"{prefix}norm")
    return out


def fold_batchnorm_(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm adjacent to a conv / linear layer into it, in place (children first); idempotent."""
    for _, m in _children_first(model):
        if callable(getattr(m, "fold_batchnorm", None)):
            m.fold_batchnorm()
        elif _plain_sequential(m):
            fold_sequential_(m)
        elif _head_bn_foldable(m):
            _fold_head_(m)
    return model


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
        keys = set(keys)
        for name, m in _children_first(model):
            prefix = f"{name}." if name else ""
            if _head_bn_foldable(m) and not set(m.norm.state_dict(prefix=f"{prefix}norm.")) <= keys:
                _fold_head_(m)
        return model


FOLD_BATCHNORM = register_transform(FoldBatchNorm())


def prepare_for_inference_(model: nn.Module) -> nn.Module:
    """In place: structural re-parameterisation, then every remaining foldable BatchNorm; eval mode."""
    model.eval()
    return fold_batchnorm_(reparameterize_(model))


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
        from .reparam import is_reparameterizable
        return is_reparameterizable(model) or bool(batchnorm_folds(model))

    def match_checkpoint(self, model: nn.Module, keys: Iterable[str]) -> nn.Module:
        from .reparam import match_reparam_form_
        return FOLD_BATCHNORM.match_checkpoint(match_reparam_form_(model, keys), keys)


PREPARE = register_transform(PrepareForInference())
