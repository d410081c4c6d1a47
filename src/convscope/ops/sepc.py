"""SEPC pyramid convolution with integrated batch normalisation (Wang et al., "Scale-Equalizing Pyramid
Convolution for Object Detection", CVPR 2020, arXiv 2005.03101; official code jshilong/SEPC).

Pyramid convolution (PConv) is a 3-D convolution over (level, H, W) with kernel size 3 along the level axis:
output level l = conv_mid(x_l) + conv_down(x_{l-1}) (stride 2, from the finer level) + upsample(conv_up(x_{l+1}))
(bilinear, align_corners=True, to level l's size), the three kernels shared by all levels. Integrated BN (iBN)
normalises the whole pyramid with one set of statistics: all levels are flattened and concatenated before one
BatchNorm. The deformable, scale-equalising kernel of SEPC at the higher levels is not included here: this is the
plain PConv + iBN ("SEPC-lite" without deformable parts).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class IntegratedBatchNorm(nn.Module):
    """One BatchNorm over all levels of a pyramid: statistics are computed over every position of every level."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [f.shape[2] * f.shape[3] for f in feats]
        flat = torch.cat([f.flatten(2) for f in feats], dim=2)
        out = self.bn(flat).split(sizes, dim=2)
        return [o.reshape(f.shape).contiguous(memory_format=_format(f)) for o, f in zip(out, feats, strict=False)]


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


class PyramidConv(nn.Module):
    """PConv over a list of NCHW maps, finest first, each level half the size of the previous one, followed by
    integrated BN and an optional ReLU. Returns a list of the same length and sizes (out_channels channels)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, ibn: bool = True,
                 act: bool = False) -> None:
        super().__init__()
        p = kernel_size // 2
        self.conv_mid = nn.Conv2d(in_channels, out_channels, kernel_size, padding=p)
        self.conv_down = nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=p)
        self.conv_up = nn.Conv2d(in_channels, out_channels, kernel_size, padding=p)
        self.ibn = IntegratedBatchNorm(out_channels) if ibn else None
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, x in enumerate(feats):
            y = self.conv_mid(x)
            if i > 0:
                y = y + self.conv_down(feats[i - 1])
            if i < len(feats) - 1:
                y = y + F.interpolate(self.conv_up(feats[i + 1]), size=y.shape[-2:], mode="bilinear",
                                      align_corners=True)
            out.append(y)
        if self.ibn is not None:
            out = self.ibn(out)
        return [self.act(y) for y in out]
