"""Pieces the segmentation heads share: conv + BN + ReLU, bilinear resizing, and the head interface."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class ConvBNReLU(nn.Sequential):
    """A k x k conv ('same' padding, no bias), BatchNorm and ReLU: mmseg's ConvModule with its default norm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of an NCHW map to `size` (align_corners=False); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegHead(nn.Module):
    """Base of the decode heads: maps a list of NCHW stage maps (finest first) to class logits at the finest map's
    resolution. `in_channels` and `reductions` hold one entry per map; `channels` is the head's width.
    `forward` returns the logits, or (logits, auxiliary logits) for a head with an auxiliary branch (OCR)."""

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int,
                 channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        if len(in_channels) != len(reductions) or not in_channels:
            raise ValueError(f"a head needs one channel count and one reduction per map; got {list(in_channels)} "
                             f"and {list(reductions)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive class count; got {num_classes}")
        self.in_channels = list(in_channels)
        self.reductions = list(reductions)
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout)
        self.cls_seg = nn.Conv2d(channels, num_classes, 1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout, then the 1x1 classifier (mmseg's `cls_seg`)."""
        return self.cls_seg(self.dropout(x))
