"""Plain depthwise k x k convolution token mixer (ConvNeXt's 7x7 depthwise conv, Liu et al., arXiv 2201.03545, as
a MetaFormer mixer): the baseline the other convolutional mixers are compared with."""
from __future__ import annotations

import torch
from torch import nn


class DWConvMixer(nn.Module):
    """Depthwise k x k conv with 'same' zero padding over NCHW maps (one k x k filter per channel, bias)."""

    channels_last = False

    def __init__(self, dim: int, kernel_size: int = 7, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
