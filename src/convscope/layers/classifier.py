"""The classification head shared by the hierarchical models."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Global average pool -> norm -> dropout -> fc.

    `fc` is a Linear layer, or whatever `fc_factory(in_features, num_classes)` builds (an MlpHead, say).
    The norm acts on the pooled (B, C) vector, which equals a channels-first LayerNorm on the (B, C, 1, 1) map;
    with `norm_first=True` it acts on the (B, C, H, W) map before pooling instead (PoolFormer v1's GroupNorm).
    """

    def __init__(self, in_features: int, num_classes: int, norm_layer: Callable[[int], nn.Module] | None = None,
                 drop_rate: float = 0.0, fc_factory: Callable[[int, int], nn.Module] | None = None,
                 norm_first: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.norm_first = norm_first
        self.fc_factory = fc_factory or nn.Linear
        self.norm = norm_layer(in_features) if norm_layer else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = self.fc_factory(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = self.fc_factory(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x).mean((2, 3)) if self.norm_first else self.norm(x.mean((2, 3)))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)
