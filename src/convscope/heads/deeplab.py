"""DeepLabV3+'s head (Chen, Zhu, Papandreou, Schroff and Adam, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", ECCV 2018, arXiv 1802.02611).

ASPP (`convscope.ops.ASPP`: 1x1, three 3x3 atrous branches and image pooling) on the deepest map, its rates
(6, 12, 18) at output stride 16 scaled with the deepest map's stride as DeepLab does (doubled at 8, halved at 32:
rate * 16 / stride, at least 1). The decoder reduces the finest map (stride 4 on a hierarchical backbone) to 48
channels by a 1x1 conv-BN-ReLU, concatenates the ASPP output upsampled (bilinear) to its size, and refines with
two 3x3 conv-BN-ReLU layers; dropout and a 1x1 classifier give logits at the finest map's resolution.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops import ASPP
from .common import ConvBNReLU, SegHead, resize

#: ASPP rates at output stride 16 (DeepLab v3).
ASPP_RATES_OS16 = (6, 12, 18)


def aspp_rates(stride: int, rates: Sequence[int] = ASPP_RATES_OS16) -> tuple[int, ...]:
    """DeepLab's rates for a map at `stride`: the output-stride-16 rates times 16 / stride, at least 1."""
    return tuple(max(1, round(r * 16 / stride)) for r in rates)


class DeepLabV3PlusHead(SegHead):
    """(list of stage maps) -> (B, num_classes, H_0, W_0) at the finest map's resolution."""

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int, channels: int = 256,
                 low_level_channels: int = 48) -> None:
        super().__init__(in_channels, reductions, num_classes, channels)
        self.aspp = ASPP(self.in_channels[-1], channels, rates=aspp_rates(self.reductions[-1]), dropout=0.0)
        self.low_level = ConvBNReLU(self.in_channels[0], low_level_channels, 1)
        self.decoder = nn.Sequential(ConvBNReLU(channels + low_level_channels, channels),
                                     ConvBNReLU(channels, channels))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        low = self.low_level(feats[0])
        high = resize(self.aspp(feats[-1]), low.shape[-2:])
        return self.classify(self.decoder(torch.cat([high, low], dim=1)))
