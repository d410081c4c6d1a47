"""Single-level 2-D Haar discrete wavelet transform and its inverse, the DWT token-mixing step of WaveMix
(Jeevan and Sethi, "WaveMix: A Resource-efficient Neural Network for Image Analysis", arXiv 2205.14375; official
pranavphoenix/WaveMix, which uses pytorch_wavelets' DWTForward(wave='db1', mode='zero')).

Each non-overlapping 2x2 block [[a, b], [c, d]] of every channel gives four coefficients
LL = (a + b + c + d) / 2, LH = (a + b - c - d) / 2, HL = (a - b + c - d) / 2, HH = (a - b - c + d) / 2
(pytorch_wavelets' band order: LH is low-pass along W and high-pass along H). The four filters are orthonormal,
so the inverse is the transposed convolution with the same filters and IDWT(DWT(x)) == x. Odd sizes are padded
with one zero row/column at the end (pywt's 'zero' mode for Haar); the inverse then returns the padded size
unless `size` is given.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

HAAR_FILTERS = torch.tensor([[[1.0, 1.0], [1.0, 1.0]],
                             [[1.0, 1.0], [-1.0, -1.0]],
                             [[1.0, -1.0], [1.0, -1.0]],
                             [[1.0, -1.0], [-1.0, 1.0]]]) / 2


def _filters(channels: int, x: torch.Tensor) -> torch.Tensor:
    return HAAR_FILTERS.to(device=x.device, dtype=x.dtype).unsqueeze(1).repeat(channels, 1, 1, 1)


def haar_dwt2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (LL (B, C, H', W'), highs (B, C, 3, H', W')), H' = ceil(H / 2)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2))
    y = F.conv2d(x, _filters(c, x), stride=2, groups=c)
    y = y.view(b, c, 4, *y.shape[-2:])
    return y[:, :, 0], y[:, :, 1:]


def haar_idwt2d(ll: torch.Tensor, highs: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of `haar_dwt2d`; `size` crops to the original (H, W) when it was odd."""
    b, c = ll.shape[:2]
    y = torch.cat([ll.unsqueeze(2), highs], dim=2).reshape(b, 4 * c, *ll.shape[-2:])
    x = F.conv_transpose2d(y, _filters(c, y), stride=2, groups=c)
    return x if size is None else x[..., :size[0], :size[1]]


class HaarDWT2d(nn.Module):
    """J-level Haar DWT: returns (LL at level J, [highs at level 1, ..., J]) like pytorch_wavelets' DWTForward."""

    def __init__(self, levels: int = 1) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        highs = []
        for _ in range(self.levels):
            x, h = haar_dwt2d(x)
            highs.append(h)
        return x, highs


class HaarIDWT2d(nn.Module):
    """Inverse of HaarDWT2d (for even sizes at every level, or with the sizes to crop to)."""

    def forward(self, ll: torch.Tensor, highs: list[torch.Tensor]) -> torch.Tensor:
        for h in reversed(highs):
            ll = haar_idwt2d(ll, h)
        return ll
