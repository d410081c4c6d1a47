"""Inception depthwise convolution (InceptionNeXt, arXiv 2303.16900)."""
from __future__ import annotations

import torch
from torch import nn


class InceptionDWConv2d(nn.Module):
    """Split the channels into four groups and mix each spatially in its own way:
    identity | depthwise k_s x k_s | depthwise 1 x k_b | depthwise k_b x 1, then concatenate.

    Each conv branch gets `int(C * branch_ratio)` channels; the identity keeps the rest. Decomposing a large
    kernel into a small square and two bands keeps the receptive field at a fraction of the memory traffic.
    """

    channels_last = False

    def __init__(self, dim: int, square_kernel_size: int = 3, band_kernel_size: int = 11,
                 branch_ratio: float = 0.125, dilation: int = 1) -> None:
        super().__init__()
        gc = int(dim * branch_ratio)
        sq_pad = dilation * (square_kernel_size - 1) // 2
        band_pad = dilation * (band_kernel_size - 1) // 2
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel_size, padding=sq_pad, dilation=dilation, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band_kernel_size), padding=(0, band_pad), dilation=(1, dilation),
                                  groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band_kernel_size, 1), padding=(band_pad, 0), dilation=(dilation, 1),
                                  groups=gc)
        self.split_sizes = (dim - 3 * gc, gc, gc, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_sizes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)
