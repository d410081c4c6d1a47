"""SCNN spatial message passing (Pan et al., "Spatial As Deep: Spatial CNN for Traffic Scene Understanding",
AAAI 2018, arXiv 1712.06080).

The feature map is cut into slices (rows, then columns) and messages are passed slice by slice in four
directions, downward, upward, rightward and leftward, in that order: in the downward pass row i becomes
`x[i] + ReLU(conv(x'[i-1]))`, with `x'[i-1]` the row above as already updated. `conv` is one C -> C convolution
of width `kernel_size` along the slice, without bias, one per direction and shared by all slices. The result
keeps the input's shape, so the module is a token mixer (name "scnn").
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DIRECTIONS = ("down", "up", "right", "left")


class SpatialMessagePassing(nn.Module):
    """Four sequential slice-by-slice convolution passes over an NCHW map (see the module docstring).

    dim: channels. kernel_size: width of each slice convolution (9 in the paper). directions: the passes, in
    order, any of "down", "up", "right", "left".
    """

    channels_last = False

    def __init__(self, dim: int, kernel_size: int = 9, directions: tuple[str, ...] = DIRECTIONS) -> None:
        super().__init__()
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad or not directions:
            raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS}; got {directions}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd; got {kernel_size}")
        self.directions = tuple(directions)
        p = kernel_size // 2
        # vertical passes convolve along a row (1 x k), horizontal passes along a column (k x 1)
        self.convs = nn.ModuleDict({
            d: nn.Conv2d(dim, dim, (1, kernel_size) if d in ("down", "up") else (kernel_size, 1),
                         padding=(0, p) if d in ("down", "up") else (p, 0), bias=False)
            for d in self.directions})

    @staticmethod
    def _pass(x: torch.Tensor, conv: nn.Module, dim: int, reverse: bool) -> torch.Tensor:
        slices = list(x.split(1, dim))
        order = range(len(slices) - 2, -1, -1) if reverse else range(1, len(slices))
        for i in order:
            prev = slices[i + 1] if reverse else slices[i - 1]
            slices[i] = slices[i] + F.relu(conv(prev))
        return torch.cat(slices, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for d in self.directions:
            dim = 2 if d in ("down", "up") else 3
            x = self._pass(x, self.convs[d], dim, reverse=d in ("up", "left"))
        return x
