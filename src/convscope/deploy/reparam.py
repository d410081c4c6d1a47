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

The kernel and BatchNorm arithmetic is in `convscope.layers.reparam`. `reparameterize_(model)` applies all of this
in place, children before parents; `REPARAMETERIZE` is the same as a deploy transform, and
`reparameterize_model` returns a deploy-form copy. The deploy form is for inference: BatchNorm is folded with its
running statistics, i.e. its eval-mode behaviour.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import nn

from ..layers.reparam import FOLDABLE, fuse_bn_before_conv_, fuse_bn_into_conv_, is_unpadded
from .transform import ModelTransform, register_transform


# -- the nn.Sequential rule ----------------------------------------------------------------------------------------
def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _bn_matches(layer: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and type(bn) is nn.BatchNorm2d) or \
        (isinstance(layer, nn.Linear) and type(bn) is nn.BatchNorm1d)


def sequential_bn_folds(seq: nn.Module) -> list[tuple[str, str, str]]:
    """The BatchNorms `reparameterize_` folds in a plain nn.Sequential: (bn name, layer name, "after" | "before")
    for BN directly after a conv/linear layer, or directly before one without padding (Identities skipped)."""
    if not _plain_sequential(seq):
        return []
    items = [(n, m) for n, m in seq.named_children() if not isinstance(m, nn.Identity)]
    folds, used = [], set()
    for (n1, m1), (n2, m2) in zip(items, items[1:], strict=False):
        if n1 in used:
            continue
        if isinstance(m1, FOLDABLE) and _bn_matches(m1, m2) and m2.running_mean is not None:
            folds.append((n2, n1, "after"))
            used.add(n2)
        elif isinstance(m2, FOLDABLE) and _bn_matches(m2, m1) and m1.running_mean is not None and is_unpadded(m2):
            folds.append((n1, n2, "before"))
    return folds


def _fold_sequential_one(seq: nn.Sequential, bn_name: str, layer_name: str, where: str) -> None:
    bn, layer = getattr(seq, bn_name), getattr(seq, layer_name)
    if where == "after":
        fuse_bn_into_conv_(layer, bn)
    else:
        fuse_bn_before_conv_(bn, layer)
    setattr(seq, bn_name, nn.Identity())


def fold_sequential_(seq: nn.Module) -> int:
    """Apply the nn.Sequential rule to `seq` in place; returns how many BatchNorms were folded."""
    folds = sequential_bn_folds(seq)
    for fold in folds:
        _fold_sequential_one(seq, *fold)
    return len(folds)


# -- walkers -------------------------------------------------------------------------------------------------------
def _children_first(module: nn.Module) -> list[tuple[str, nn.Module]]:
    # reversed pre-order visits every module after all of its descendants
    return list(reversed(list(module.named_modules())))


def reparameterize_(module: nn.Module) -> nn.Module:
    """Turn `module` into its deploy form in place (children before parents) and return it. Idempotent."""
    for _, m in _children_first(module):
        if callable(getattr(m, "reparameterize", None)):
            m.reparameterize()
        elif _plain_sequential(m):
            fold_sequential_(m)
    return module


def is_reparameterizable(module: nn.Module) -> bool:
    """Whether `reparameterize_` would change anything structural in `module` (works on the meta device)."""
    return any(callable(getattr(m, "reparameterize", None)) or sequential_bn_folds(m) for m in module.modules())


def match_reparam_form_(module: nn.Module, keys: Iterable[str]) -> nn.Module:
    """Re-parameterise just the parts of `module` whose state-dict keys are not among `keys`, children first.

    This brings a train-form model to the form a checkpoint was saved in: the train form itself, our deploy
    form, or an official code's partial deploy form (e.g. RepLKNet's merged kernels with BatchNorms kept), so
    the checkpoint can be loaded strictly and the model then fully re-parameterised.
    """
    keys = set(keys)
    for name, m in _children_first(module):
        prefix = f"{name}." if name else ""
        if callable(getattr(m, "reparameterize", None)):
            if not set(m.state_dict(prefix=prefix, keep_vars=True)) <= keys:
                m.reparameterize()
        elif _plain_sequential(m):
            for bn_name, layer_name, where in sequential_bn_folds(m):
                bn_keys = set(getattr(m, bn_name).state_dict(prefix=f"{prefix}{bn_name}.", keep_vars=True))
                if not bn_keys <= keys:
                    _fold_sequential_one(m, bn_name, layer_name, where)
    return module


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


def reparameterize_model(model: nn.Module) -> nn.Module:
    """A deploy-form copy of `model`, in eval mode: parallel branches merged into single kernels and every
    BatchNorm beside a conv folded into it. `model` itself is left untouched; the copy's outputs equal the
    original's eval-mode outputs (up to floating-point rounding)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"reparameterize_model expects an nn.Module; got {type(model).__name__}")
    return reparameterize_(copy.deepcopy(model)).eval()
