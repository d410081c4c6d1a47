"""Inverted separable convolution token mixer (ConvFormer, MetaFormer Baselines, arXiv 2210.13452)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..activations import StarReLU


class SepConv(nn.Module):
    """MobileNetV2-style inverted separable conv: pointwise expand (x2) -> StarReLU -> depthwise 7x7 ->
    pointwise project. No biases. Pointwise layers are 1x1 convs on NCHW maps."""

    channels_last = False

    def __init__(self, dim: int, expansion_ratio: float = 2, act1_layer: Callable[[], nn.Module] = StarReLU,
                 act2_layer: Callable[[], nn.Module] = nn.Identity, bias: bool = False, kernel_size: int = 7,
                 padding: int | None = None) -> None:
        super().__init__()
        mid = int(expansion_ratio * dim)
        padding = kernel_size // 2 if padding is None else padding
        self.pwconv1 = nn.Conv2d(dim, mid, 1, bias=bias)
        self.act1 = act1_layer()
        self.dwconv = nn.Conv2d(mid, mid, kernel_size, padding=padding, groups=mid, bias=bias)
        self.act2 = act2_layer()
        self.pwconv2 = nn.Conv2d(mid, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.act2(self.dwconv(self.act1(self.pwconv1(x)))))
