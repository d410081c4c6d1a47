"""Sub-pixel convolution and ESPCN (Shi et al., "Real-Time Single Image and Video Super-Resolution Using an
Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016, arXiv 1609.05158).

A sub-pixel convolution upsamples by r with a stride-1 convolution to C * r^2 channels in low-resolution space
followed by the periodic shuffle (`pixel_shuffle`), which moves each group of r^2 channels to an r x r block of
output pixels. ESPCN is the paper's network: conv 5x5 64 -> tanh -> conv 3x3 32 -> tanh -> sub-pixel conv 3x3
to C * r^2 channels (no activation on the output).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SubPixelConv2d(nn.Module):
    """conv (in -> out * r^2, stride 1, 'same' padding) then pixel shuffle by r: (B, in, H, W) -> (B, out, rH, rW)."""

    def __init__(self, in_channels: int, out_channels: int, upscale: int, kernel_size: int = 3,
                 bias: bool = True) -> None:
        super().__init__()
        self.upscale = upscale
        self.conv = nn.Conv2d(in_channels, out_channels * upscale ** 2, kernel_size, padding=kernel_size // 2,
                              bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), self.upscale)


class ESPCN(nn.Module):
    """ESPCN with the published layout (f1=5, n1=64; f2=3, n2=32; f3=3), tanh activations; in_chans = 1 for the
    luminance channel as in the paper."""

    def __init__(self, upscale: int = 3, in_chans: int = 1, widths: tuple[int, int] = (64, 32)) -> None:
        super().__init__()
        self.upscale = upscale
        self.conv1 = nn.Conv2d(in_chans, widths[0], 5, padding=2)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1)
        self.act = nn.Tanh()
        self.upsample = SubPixelConv2d(widths[1], in_chans, upscale, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.act(self.conv2(self.act(self.conv1(x)))))
