"""The deploy transform protocol: one small interface that every model transform implements.

A transform changes a model's form for inference without changing what it computes (re-parameterisation, BN
folding) or within a measured budget (int8, pruning). It

- `apply(model)`: transforms `model` in place and returns it; idempotent;
- `applies_to(model)`: says whether the model has parts the transform acts on (cheap; works on the meta
  device), so tools can skip or report it;
- `match_checkpoint(model, keys)`: brings a freshly built model to the form a checkpoint with these state-dict
  keys was saved in, so that the checkpoint loads strictly (`create_model(..., deploy=True, pretrained=...)`).
  A transform whose output cannot be told from its keys leaves the model as it is.

`transform(model, name)` applies a registered transform to a copy; `TRANSFORMS` lists them.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import nn


class ModelTransform:
    """Base of the deploy transforms; subclasses set `name` and implement `apply` and `applies_to`."""

    name: str = ""

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def applies_to(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def match_checkpoint(self, model: nn.Module, keys: Iterable[str]) -> nn.Module:
        return model

    def __call__(self, model: nn.Module) -> nn.Module:
        return self.apply(model)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


TRANSFORMS: dict[str, ModelTransform] = {}


def register_transform(t: ModelTransform) -> ModelTransform:
    """Add a transform instance to `TRANSFORMS` under its name (once)."""
    if not t.name or t.name in TRANSFORMS:
        raise ValueError(f"a transform needs a unique name; got {t.name!r} (known: {sorted(TRANSFORMS)})")
    TRANSFORMS[t.name] = t
    return t


def get_transform(name: str) -> ModelTransform:
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown deploy transform {name!r}; expected one of {sorted(TRANSFORMS)}") from None


def transform(model: nn.Module, *names: str) -> nn.Module:
    """A copy of `model`, in eval mode, with the named transforms applied in order."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"transform expects an nn.Module; got {type(model).__name__}")
    steps = [get_transform(n) for n in names]
    out = copy.deepcopy(model).eval()
    for t in steps:
        out = t.apply(out)
    return out
