"""The BatchNorm-folding walk of `convscope.deploy.fold` (which states the rule), kept below models/ so that a
model file saved in its prepared (inference) form can be rebuilt without deploy/: `fold_batchnorm_`,
`batchnorm_folds`, `match_head_folds_` and `prepare_for_inference_` (re-parameterise, then fold what is left)."""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .classifier import ClassifierHead
from .reparam import (
    bn_affine,
    children_first,
    fold_sequential_,
    fuse_affine_before_,
    plain_sequential,
    reparameterize_,
    sequential_bn_folds,
)

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
        elif plain_sequential(m):
            out += [f"{prefix}{bn}" for bn, _, _ in sequential_bn_folds(m)]
        elif _head_bn_foldable(m):
            out.append(f"{prefix}norm")
    return out


def fold_batchnorm_(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm adjacent to a conv / linear layer into it, in place (children first); idempotent."""
    for _, m in children_first(model):
        if callable(getattr(m, "fold_batchnorm", None)):
            m.fold_batchnorm()
        elif plain_sequential(m):
            fold_sequential_(m)
        elif _head_bn_foldable(m):
            _fold_head_(m)
    return model


def match_head_folds_(model: nn.Module, keys: Iterable[str]) -> nn.Module:
    """Fold the classifier-head BatchNorms whose keys a checkpoint lacks (it was saved with them folded)."""
    keys = set(keys)
    for name, m in children_first(model):
        prefix = f"{name}." if name else ""
        if _head_bn_foldable(m) and not set(m.norm.state_dict(prefix=f"{prefix}norm.")) <= keys:
            _fold_head_(m)
    return model


def prepare_for_inference_(model: nn.Module) -> nn.Module:
    """In place: structural re-parameterisation, then every remaining foldable BatchNorm; eval mode."""
    model.eval()
    return fold_batchnorm_(reparameterize_(model))
