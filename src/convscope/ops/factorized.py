"""Factorised spatio-temporal and higher-dimensional convolutions.

- (2+1)D convolution (Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition",
  CVPR 2018, arXiv 1711.11248): a t x k x k 3-D conv split into a 1 x k x k spatial conv to M channels, BN, ReLU
  and a t x 1 x 1 temporal conv, with M = floor(t k^2 C_in C_out / (k^2 C_in + t C_out)) so that the parameter
  count matches the full 3-D conv.
- Separable N-D convolution (the separable 4-D convolutions of RSTAR4D-Net and of VCN, Yang and Ramanan 2019,
  and the separable 3-D case): one 1-D conv along the first axis (C_in -> C_out) followed by depthwise 1-D convs
  along every other axis. It equals a dense conv whose kernel is the outer product
  W[o, i, a, b, ...] = w1[o, i, a] w2[o, b] ..., which `separable_full_kernel` builds. 4-D convolution (B, C, D1,
  D2, D3, D4) is not in torch: the 1-D convs run as 3-D convs with singleton kernel axes over folded maps, and
  `conv4d` is the dense reference (a sum of 3-D convs over the fourth kernel axis).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Conv2Plus1d(nn.Module):
    """R(2+1)D block: (B, C_in, T, H, W) -> (B, C_out, T', H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (3, 3),
                 stride: tuple[int, int] = (1, 1), mid_channels: int | None = None, bias: bool = False) -> None:
        super().__init__()
        t, k = kernel_size
        st, ss = stride
        if mid_channels is None:
            mid_channels = (t * k * k * in_channels * out_channels) // (k * k * in_channels + t * out_channels)
        self.mid_channels = mid_channels
        self.spatial = nn.Conv3d(in_channels, mid_channels, (1, k, k), (1, ss, ss), (0, k // 2, k // 2), bias=bias)
        self.bn = nn.BatchNorm3d(mid_channels)
        self.act = nn.ReLU()
        self.temporal = nn.Conv3d(mid_channels, out_channels, (t, 1, 1), (st, 1, 1), (t // 2, 0, 0), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(self.act(self.bn(self.spatial(x))))


class SeparableConv3d(nn.Module):
    """Separable 3-D conv: along D (C_in -> C_out), then depthwise along H, then along W; 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3,
                 bias: bool = False) -> None:
        super().__init__()
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.kernel_size = k
        self.convs = nn.ModuleList([
            nn.Conv3d(in_channels, out_channels, (k[0], 1, 1), padding=(k[0] // 2, 0, 0), bias=bias),
            nn.Conv3d(out_channels, out_channels, (1, k[1], 1), padding=(0, k[1] // 2, 0), groups=out_channels,
                      bias=False),
            nn.Conv3d(out_channels, out_channels, (1, 1, k[2]), padding=(0, 0, k[2] // 2), groups=out_channels,
                      bias=False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return x

    def full_kernel(self) -> torch.Tensor:
        return separable_full_kernel([c.weight.flatten(2) for c in self.convs])


class SeparableConv4d(nn.Module):
    """Separable 4-D conv over (B, C, D1, D2, D3, D4): a (C_in -> C_out) 1-D conv along D1, then depthwise 1-D
    convs along D2, D3, D4; 'same' padding, stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int, int] = 3,
                 bias: bool = False) -> None:
        super().__init__()
        k = (kernel_size,) * 4 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.kernel_size = k
        self.w1 = nn.Conv3d(in_channels, out_channels, (k[0], 1, 1), padding=(k[0] // 2, 0, 0), bias=bias)
        self.dw = nn.ModuleList([
            nn.Conv3d(out_channels, out_channels, (k[a], 1, 1), padding=(k[a] // 2, 0, 0), groups=out_channels,
                      bias=False) for a in (1, 2, 3)])

    @staticmethod
    def _along(x: torch.Tensor, conv: nn.Module, axis: int) -> torch.Tensor:
        # bring `axis` (2..5) to position 2, fold the last two remaining spatial axes, run the 3-D conv
        perm = [0, 1, axis] + [a for a in (2, 3, 4, 5) if a != axis]
        y = x.permute(perm)
        b, c, d, p, q, r = y.shape
        y = conv(y.reshape(b, c, d, p, q * r))
        y = y.reshape(b, y.shape[1], d, p, q, r)
        return y.permute([perm.index(a) for a in range(6)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._along(x, self.w1, 2)
        for axis, conv in zip((3, 4, 5), self.dw, strict=False):
            x = self._along(x, conv, axis)
        return x

    def full_kernel(self) -> torch.Tensor:
        return separable_full_kernel([self.w1.weight.flatten(2)] + [c.weight.flatten(2) for c in self.dw])


def separable_full_kernel(factors: list[torch.Tensor]) -> torch.Tensor:
    """The dense kernel of a separable conv: factors[0] is (C_out, C_in, k0), the others (C_out, 1, k_a);
    returns (C_out, C_in, k0, k1, ...) = outer product along the kernel axes."""
    w = factors[0]
    for f in factors[1:]:
        w = w.unsqueeze(-1) * f.reshape(f.shape[0], 1, *([1] * (w.dim() - 2)), f.shape[-1])
    return w


def conv4d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Dense 4-D convolution, stride 1, 'same' zero padding (odd kernels): (B, C_in, D1..D4) with weight
    (C_out, C_in, k1..k4). A sum over the first kernel axis of 3-D convolutions."""
    k1 = weight.shape[2]
    p = k1 // 2
    xp = F.pad(x, (0, 0, 0, 0, 0, 0, p, p))
    d1 = x.shape[2]
    out = 0
    pad3 = tuple(k // 2 for k in weight.shape[3:])
    for a in range(k1):
        sl = xp[:, :, a:a + d1]  # (B, C, D1, D2, D3, D4)
        b, c = sl.shape[:2]
        y = F.conv3d(sl.transpose(1, 2).reshape(b * d1, c, *sl.shape[3:]), weight[:, :, a], padding=pad3)
        out = out + y.reshape(b, d1, *y.shape[1:]).transpose(1, 2)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1, 1, 1)
    return out
