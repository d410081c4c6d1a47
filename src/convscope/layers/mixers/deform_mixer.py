"""Deformable-convolution token mixer (Dai et al. 2017, arXiv 1703.06211; Zhu et al. 2019, arXiv 1811.11168):
a depthwise deformable k x k conv with its own offset predictor. See `convscope.ops.DeformConv2d` for the
operator and its hardware-friendly restrictions (shared/static offsets, limited range)."""
from __future__ import annotations

import torch
from torch import nn

from ...ops.deform_conv import DeformConv2d


class DeformMixer(nn.Module):
    """Depthwise (groups = dim) deformable conv over NCHW maps, same shape out.

    kernel_size: k; modulated: v2 masks (default) or v1; offset_groups: channel groups sharing offsets;
    offset_mode: "dense" | "shared" | "static"; max_offset: clamp range or None."""

    channels_last = False

    def __init__(self, dim: int, kernel_size: int = 3, modulated: bool = True, offset_groups: int = 1,
                 offset_mode: str = "dense", max_offset: float | None = None) -> None:
        super().__init__()
        self.conv = DeformConv2d(dim, dim, kernel_size, groups=dim, modulated=modulated,
                                 offset_groups=offset_groups, offset_mode=offset_mode, max_offset=max_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
