"""OCRNet's object-contextual head (Yuan, Chen and Wang, "Object-Contextual Representations for Semantic
Segmentation", ECCV 2020, arXiv 1909.11065), as HRNet-OCR in mmseg (FCNHead auxiliary + OCRHead).

All stage maps are resized to the finest one and concatenated (mmseg's 'resize_concat'). An auxiliary FCN branch
(1x1 conv-BN-ReLU, 1x1 classifier) predicts soft object regions, supervised by the labels. The main branch:
a 3x3 conv-BN-ReLU gives pixel representations X (`channels`); the object-region representations are
f_k = sum_p softmax_p(region_k)[p] X[p] (a spatial softmax per class). The pixel-region relation is an attention
with queries from the pixels and keys/values from the K regions, through `key_channels`-wide projections (two
1x1 conv-BN-ReLU for queries and keys, one for values, one back to `channels`), softmax(q k^T / sqrt(d)) v; the
object-contextual representation is concatenated with X and fused by a 1x1 conv-BN-ReLU, then dropout and a 1x1
classifier. `forward` returns (logits, auxiliary logits), both at the finest map's resolution.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import ConvBNReLU, SegHead, resize


def object_regions(features: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Object-region representations (B, C, K, 1): each class's spatial softmax over `regions` (B, K, H, W)
    weighting the pixel `features` (B, C, H, W)."""
    probs = regions.flatten(2).softmax(dim=2)                       # (B, K, HW)
    context = torch.bmm(probs, features.flatten(2).transpose(1, 2))  # (B, K, C)
    return context.transpose(1, 2).unsqueeze(3)


class ObjectAttention(nn.Module):
    """The pixel-region relation: pixels (B, C, H, W) attend to object regions (B, C, K, 1) -> (B, C, H, W)."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.query_project = nn.Sequential(ConvBNReLU(channels, key_channels, 1), ConvBNReLU(key_channels,
                                                                                             key_channels, 1))
        self.key_project = nn.Sequential(ConvBNReLU(channels, key_channels, 1), ConvBNReLU(key_channels,
                                                                                           key_channels, 1))
        self.value_project = ConvBNReLU(channels, key_channels, 1)
        self.out_project = ConvBNReLU(key_channels, channels, 1)
        self.scale = key_channels ** -0.5

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixels.shape
        query = self.query_project(pixels).flatten(2).transpose(1, 2)  # (B, HW, d)
        key = self.key_project(regions).flatten(2)                     # (B, d, K)
        value = self.value_project(regions).flatten(2).transpose(1, 2)  # (B, K, d)
        attn = (torch.bmm(query, key) * self.scale).softmax(dim=-1)    # (B, HW, K)
        context = torch.bmm(attn, value).transpose(1, 2).reshape(b, -1, h, w)
        return self.out_project(context)


class OCRHead(SegHead):
    """(list of stage maps) -> (logits, soft-region logits), each (B, num_classes, H_0, W_0)."""

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int, channels: int = 256,
                 key_channels: int = 128) -> None:
        super().__init__(in_channels, reductions, num_classes, channels)
        total = sum(self.in_channels)
        self.aux = nn.Sequential(ConvBNReLU(total, total, 1), nn.Dropout2d(0.1), nn.Conv2d(total, num_classes, 1))
        self.bottleneck = ConvBNReLU(total, channels)
        self.object_attention = ObjectAttention(channels, key_channels)
        self.fuse = ConvBNReLU(2 * channels, channels, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        size = feats[0].shape[-2:]
        x = torch.cat([resize(f, size) for f in feats], dim=1)
        regions = self.aux(x)
        pixels = self.bottleneck(x)
        context = self.object_attention(pixels, object_regions(pixels, regions))
        return self.classify(self.fuse(torch.cat([context, pixels], dim=1))), regions
