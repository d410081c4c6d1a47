"""Density-weighted convolution (Cammarasana and Patane, "Optimal Weighted Convolution for Classification and
Denoising", 2025; official code cammarasana123/weightedConvolution2.0, `wConv2d`).

The kernel taps are multiplied by a fixed spatial density before convolving: `conv(x, W * Phi)`, with
Phi = alpha alpha^T and alpha = (den, 1, reversed(den)) a symmetric profile over a kernel of size 2 len(den) + 1
(e.g. den = (0.75,) gives alpha = (0.75, 1, 0.75) for 3x3). Phi is a buffer, not trained: the parameter count is
the plain convolution's, and den = all ones is the plain convolution.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def density_profile(den: Sequence[float]) -> torch.Tensor:
    """alpha = (den, 1, reversed(den))."""
    d = torch.tensor([float(v) for v in den])
    return torch.cat([d, torch.ones(1), d.flip(0)])


class WeightedConv2d(nn.Conv2d):
    """nn.Conv2d whose kernel is multiplied by the fixed density Phi = alpha alpha^T (see the module docstring).
    The kernel size is 2 * len(den) + 1, padding
    'same' by default; weight and bias keep nn.Conv2d's names and initialisation."""

    def __init__(self, in_channels: int, out_channels: int, den: Sequence[float], stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, bias: bool = True) -> None:
        alpha = density_profile(den)
        k = alpha.numel()
        padding = dilation * (k // 2) if padding is None else padding
        super().__init__(in_channels, out_channels, k, stride, padding, dilation, groups, bias)
        self.register_buffer("density", torch.outer(alpha, alpha), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.density.to(self.weight.dtype), self.bias)
