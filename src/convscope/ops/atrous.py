"""Atrous (dilated) convolution and Atrous Spatial Pyramid Pooling (Chen et al., DeepLab v2, "DeepLab: Semantic
Image Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017,
arXiv 1606.00915; DeepLab v3, "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv 1706.05587).

An atrous convolution with rate r samples the input every r pixels: y[p] = sum_k w[k] x[p + r k]; with 'same'
padding r (k - 1) / 2 it keeps the map size. ASPP (v3 form) runs in parallel a 1x1 conv, three 3x3 atrous convs
(rates 6, 12, 18 at output stride 16) and image pooling (global average -> 1x1 conv -> upsample), each followed
by BN + ReLU, concatenates them and projects with 1x1 conv + BN + ReLU (+ dropout 0.1 in training).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class AtrousConv2d(nn.Conv2d):
    """nn.Conv2d with dilation `rate` and 'same' padding rate * (k - 1) / 2 (odd kernels)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, rate: int = 1, stride: int = 1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, rate * (kernel_size - 1) // 2, rate,
                         groups, bias)


def _conv_bn_relu(conv: nn.Module, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


class ASPPPooling(nn.Module):
    """Image-level features: global average pool -> 1x1 conv -> BN -> ReLU -> bilinear upsample to the map size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = _conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(F.adaptive_avg_pool2d(x, 1))
        return y.expand(-1, -1, *x.shape[-2:])  # bilinear upsampling of a 1x1 map is a broadcast


class ASPP(nn.Module):
    """DeepLab v3 ASPP: (B, C_in, H, W) -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18),
                 image_pooling: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        branches = [_conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False), out_channels)]
        branches += [_conv_bn_relu(AtrousConv2d(in_channels, out_channels, 3, r, bias=False), out_channels)
                     for r in rates]
        if image_pooling:
            branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False), out_channels),
            nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))
