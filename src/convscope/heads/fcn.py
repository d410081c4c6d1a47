"""The plain FCN head (Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
arXiv 1411.4038), in mmseg's FCNHead form: the yardstick the other heads are measured against.

On the deepest map only: `num_convs` 3x3 conv-BN-ReLU layers, the input concatenated back onto their output and
fused by one more 3x3 conv-BN-ReLU (mmseg's `concat_input=True`), dropout and a 1x1 classifier. The logits come
out at the deepest map's resolution.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import ConvBNReLU, SegHead


class FCNHead(SegHead):
    """(list of stage maps) -> (B, num_classes, H_last, W_last), from the last map alone."""

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int, channels: int = 256,
                 num_convs: int = 2) -> None:
        super().__init__(in_channels, reductions, num_classes, channels)
        c_in = self.in_channels[-1]
        self.convs = nn.Sequential(*[ConvBNReLU(c_in if i == 0 else channels, channels) for i in range(num_convs)])
        self.conv_cat = ConvBNReLU(c_in + channels, channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        return self.classify(self.conv_cat(torch.cat([x, self.convs(x)], dim=1)))
