"""Intermediate feature maps: index selection, feature_info, and the `features_only` wrapper."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .base import ConvScopeModel


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Resolve timm-style `indices` (None: all; int n: the last n; sequence: those, negatives from the end)
    into a sorted list of stage indices and the largest one."""
    if indices is None:
        take = list(range(num_features))
    elif isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices={indices} must be between 1 and {num_features}")
        take = list(range(num_features - indices, num_features))
    else:
        take = []
        for i in indices:
            j = num_features + i if i < 0 else i
            if not 0 <= j < num_features:
                raise ValueError(f"feature index {i} is out of range for {num_features} stages")
            take.append(j)
    return take, max(take)


class FeatureInfo:
    """Channels and reduction (stride) of each selected stage, timm's `feature_info` interface."""

    def __init__(self, info: list[dict], out_indices: Sequence[int]) -> None:
        self.info = [dict(info[i], index=i) for i in out_indices]
        self.out_indices = tuple(out_indices)

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.info]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self.info]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self.info]

    def __getitem__(self, i: int) -> dict:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)


class FeatureExtractor(nn.Module):
    """A backbone cut after its last wanted stage, returning the maps of `out_indices` (strides 4/8/16/32 for the
    four stages of a hierarchical model). Built by `create_model(..., features_only=True)`."""

    def __init__(self, model: ConvScopeModel, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        take, _ = feature_take_indices(len(model.feature_info), out_indices)
        model.prune_intermediate_layers(take)
        self.model = model
        self.out_indices = tuple(take)
        self.feature_info = FeatureInfo(model.feature_info, take)
        self.model_name = model.model_name
        self.card = model.card
        self.traits = model.traits  # the whole variant's, as model_traits(name) gives them
        self.in_chans = model.in_chans

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)
