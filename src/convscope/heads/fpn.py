"""Semantic FPN (Kirillov, Girshick, He and Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019,
arXiv 1901.02446; mmseg's FPN neck + FPNHead).

The FPN: a 1x1 lateral conv per stage map, a top-down pathway adding each coarser level, upsampled, to the finer
one, and a 3x3 output conv per level. The semantic branch: each level goes through max(1, log2(r / r_0)) 3x3
conv-BN-ReLU layers, each followed by a 2x bilinear upsampling while the level is coarser than the finest
(r_0 = the finest reduction), is resized to the finest level's size, and the levels are summed; dropout and a
1x1 classifier give logits at the finest map's resolution (stride 4 on a hierarchical backbone). Levels of equal
stride (isotropic backbones) get one conv and no upsampling.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .common import ConvBNReLU, SegHead, resize


def _scale_branch(in_channels: int, channels: int, ratio: float) -> nn.Sequential:
    """A semantic-FPN scale head: convs, each followed by 2x upsampling while the level is coarser than the finest."""
    steps = max(0, round(math.log2(ratio))) if ratio > 1 else 0
    layers: list[nn.Module] = []
    for i in range(max(1, steps)):
        layers.append(ConvBNReLU(in_channels if i == 0 else channels, channels))
        if i < steps:
            layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


class FPN(nn.Module):
    """The FPN neck: stage maps (finest first) -> as many maps of `channels` channels at the same sizes."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels])

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]


class SemanticFPNHead(SegHead):
    """(list of stage maps) -> (B, num_classes, H_0, W_0) at the finest map's resolution."""

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int, channels: int = 256,
                 branch_channels: int = 128) -> None:
        super().__init__(in_channels, reductions, num_classes, branch_channels)
        self.fpn = FPN(self.in_channels, channels)
        r0 = self.reductions[0]
        self.scale_heads = nn.ModuleList([_scale_branch(channels, branch_channels, r / r0) for r in self.reductions])

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = self.fpn(feats)
        size = levels[0].shape[-2:]
        out = self.scale_heads[0](levels[0])
        for head, x in zip(self.scale_heads[1:], levels[1:], strict=True):
            out = out + resize(head(x), size)
        return self.classify(out)
