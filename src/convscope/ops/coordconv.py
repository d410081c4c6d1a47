"""CoordConv (Liu et al., "An Intriguing Failing of Convolutional Neural Networks and the CoordConv Solution",
NeurIPS 2018, arXiv 1807.03247).

Two constant channels holding each pixel's coordinates, scaled to [-1, 1], are appended to the input before an
ordinary convolution: channel C holds x (the column, varying along W), channel C + 1 holds y (the row, varying
along H), and with `with_r` channel C + 2 holds r = sqrt(x^2 + y^2). A size-1 axis has coordinate 0.
"""
from __future__ import annotations

import torch
from torch import nn


def coordinate_channels(h: int, w: int, with_r: bool = False, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """(2 or 3, h, w): x, y in [-1, 1] (and r)."""
    ys = torch.linspace(-1, 1, h, dtype=dtype, device=device) if h > 1 else torch.zeros(1, dtype=dtype, device=device)
    xs = torch.linspace(-1, 1, w, dtype=dtype, device=device) if w > 1 else torch.zeros(1, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    chans = [xx, yy] + ([torch.sqrt(xx * xx + yy * yy)] if with_r else [])
    return torch.stack(chans)


class AddCoords(nn.Module):
    """(B, C, H, W) -> (B, C + 2 [+1], H, W) with the coordinate channels appended."""

    def __init__(self, with_r: bool = False) -> None:
        super().__init__()
        self.with_r = with_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        c = coordinate_channels(h, w, self.with_r, dtype=x.dtype, device=x.device)
        return torch.cat([x, c.unsqueeze(0).expand(b, -1, -1, -1)], dim=1)


class CoordConv2d(nn.Module):
    """AddCoords then nn.Conv2d(in_channels + 2 [+1], out_channels, ...)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, with_r: bool = False) -> None:
        super().__init__()
        self.add_coords = AddCoords(with_r)
        self.conv = nn.Conv2d(in_channels + 2 + int(with_r), out_channels, kernel_size, stride, padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.add_coords(x))
