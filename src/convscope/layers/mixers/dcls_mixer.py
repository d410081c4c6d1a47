"""DCLS token mixer: a depthwise dilated convolution with learnable spacings (Hassani et al., ICLR 2023,
arXiv 2112.03740), the ConvNeXt-dcls replacement of the 7x7 depthwise conv. See `convscope.ops.Dcls2d`."""
from __future__ import annotations

import torch
from torch import nn

from ...ops.dcls import Dcls2d


class DclsMixer(nn.Module):
    """Depthwise Dcls2d over NCHW maps: `kernel_count` learnable-position taps per channel in a
    `dilated_kernel_size` window ('same' padding). Defaults are ConvNeXt-dcls's (34 taps in 17x17)."""

    channels_last = False

    def __init__(self, dim: int, kernel_count: int = 34, dilated_kernel_size: int = 17, bias: bool = True) -> None:
        super().__init__()
        self.conv = Dcls2d(dim, dim, kernel_count, dilated_kernel_size, groups=dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
