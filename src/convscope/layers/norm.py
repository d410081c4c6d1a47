"""Normalisation layers in the layouts the papers use."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last (channel) dimension of a channels-last tensor; eps 1e-6 as in ConvNeXt."""

    def __init__(self, num_channels: int, eps: float = 1e-6, bias: bool = True) -> None:
        super().__init__(num_channels, eps=eps, bias=bias)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor ("channels_first" LN of ConvNeXt)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, bias: bool = True) -> None:
        super().__init__(num_channels, eps=eps, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with one group: normalises over (C, H, W) with a per-channel affine.

    This is PoolFormer's "modified LayerNorm"; MetaFormer's IdentityFormer, RandFormer and PoolFormerV2 use it
    without bias.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(1, num_channels, eps=eps)
        if not bias:
            self.bias = None
