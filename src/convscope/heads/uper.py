"""UPerNet's decode head (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018,
arXiv 1807.10221), as mmseg's UPerHead.

A pyramid pooling module (PSPNet) on the deepest map: adaptive average pooling to 1x1, 2x2, 3x3 and 6x6, a 1x1
conv-BN-ReLU each, upsampled back and concatenated with the map, then a 3x3 conv-BN-ReLU bottleneck. It becomes
the top of an FPN: 1x1 conv-BN-ReLU laterals on the other maps, the top-down pathway adds each coarser level
(bilinear) to the finer one, a 3x3 conv-BN-ReLU on each level but the top, then all levels are resized to the
finest, concatenated and fused by a 3x3 conv-BN-ReLU; dropout and a 1x1 classifier follow.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import ConvBNReLU, SegHead, resize


class PPM(nn.Module):
    """Pyramid pooling: (B, C, H, W) -> list of (B, channels, H, W), one per pool scale."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels, 1))
                                     for s in pool_scales])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(stage(x), x.shape[-2:]) for stage in self.stages]


class UPerHead(SegHead):
    """(list of stage maps) -> (B, num_classes, H_0, W_0) at the finest map's resolution."""

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int, channels: int = 256,
                 pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__(in_channels, reductions, num_classes, channels)
        *lower, top = self.in_channels
        self.psp_modules = PPM(top, channels, pool_scales)
        self.bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels)
        self.lateral_convs = nn.ModuleList([ConvBNReLU(c, channels, 1) for c in lower])
        self.fpn_convs = nn.ModuleList([ConvBNReLU(channels, channels) for _ in lower])
        self.fpn_bottleneck = ConvBNReLU(len(self.in_channels) * channels, channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats[:-1], strict=True)]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        return self.classify(self.fpn_bottleneck(torch.cat([resize(o, size) for o in outs], dim=1)))
