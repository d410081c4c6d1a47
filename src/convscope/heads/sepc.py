"""The SEPC neck between a backbone and a head (Wang et al., "Scale-Equalizing Pyramid Convolution for Object
Detection", CVPR 2020, arXiv 2005.03101): 1x1 lateral convs bring every stage map to `channels`, then
`num_convs` pyramid convolutions with integrated BN and ReLU (`convscope.ops.PyramidConv`, the plain PConv + iBN
form) mix each level with its neighbours. PConv's stride-2 kernel needs each level half the size of the one
before it, so the neck takes only pyramids whose strides double level to level, and the segmenter pads its
input to a multiple of the deepest stride (`size_divisor`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops import PyramidConv


class SEPCNeck(nn.Module):
    """Stage maps (finest first) -> maps of `channels` channels at the same sizes."""

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], channels: int = 256,
                 num_convs: int = 2) -> None:
        super().__init__()
        reductions = list(reductions)
        if len(reductions) < 2 or any(b != 2 * a for a, b in zip(reductions, reductions[1:], strict=False)):
            raise ValueError(f"the SEPC neck needs a pyramid whose strides double level to level; "
                             f"the backbone's are {reductions}")
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in in_channels])
        self.pconvs = nn.ModuleList([PyramidConv(channels, channels, act=True) for _ in range(num_convs)])
        self.out_channels = [channels] * len(reductions)
        self.size_divisor = reductions[-1]

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        levels = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
        for pconv in self.pconvs:
            levels = pconv(levels)
        return levels
