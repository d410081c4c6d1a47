"""DCLS: dilated convolution with learnable spacings (Hassani, Pellegrini & Masquelier, "Dilated Convolution with
Learnable Spacings", ICLR 2023, arXiv 2112.03740; official K-H-Ismail/Dilated-Convolution-with-Learnable-Spacings-
PyTorch, `DCLS/construct/modules.py` `ConstructKernel2d.forward_v1`, and K-H-Ismail/ConvNeXt-dcls).

A 2-D kernel with `kernel_count` non-zero elements whose *positions* are learned. Element e of filter (o, i) has a
weight W[o, i, e] and a real position P[:, o, i, e] = (column, row) offset from the kernel centre, in
[-(s//2), s//2] for a dense `dilated_kernel_size` s. The dense s x s kernel is built by bilinear interpolation:

    K[o, i, r, c] = sum_e W[o, i, e] * B_e(r, c) / (sum_{r, c} B_e(r, c) + 1e-7),
    B_e(r, c) = relu(1 - |c - (P0 + s0//2)|) * relu(1 - |r - (P1 + s1//2)|)

(the official "v1" construction, normalisation included), then applied as an ordinary convolution. At integer
positions each element lands on one tap with weight W (up to the 1e-7), so DCLS contains the dilated and any
sparse convolution; positions move continuously under gradient descent. `clamp_parameters()` keeps positions in
range (call it after each optimiser step, as the official training loop does). `materialize()` materialises K
into a plain `nn.Conv2d`-shaped buffer (deploy form: a dense s x s conv).

Parameter layout as the official Dcls2d: weight (C_out, C_in/groups, kernel_count), P (2, C_out, C_in/groups,
kernel_count), P[0] the column (width) offset and P[1] the row (height) offset. A depthwise DCLS is a drop-in for a
depthwise conv: ConvNeXt-dcls uses Dcls2d(dim, dim, kernel_count=34, dilated_kernel_size=17, padding=8,
groups=dim); `kernel_count = k*k // 3` keeps a k x k depthwise conv's parameter count (weights + 2 positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import conv_default_init_


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Dcls2d(nn.Module):
    """2-D convolution whose `kernel_count` kernel elements sit at learnable positions inside a
    `dilated_kernel_size` window (bilinear interpolation). Same arguments as nn.Conv2d otherwise (stride,
    padding, dilation 1, groups, bias); padding defaults to 'same' (s//2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_count: int,
                 dilated_kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | None = None, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                             f"by groups ({groups})")
        if kernel_count < 1:
            raise ValueError(f"kernel_count must be >= 1; got {kernel_count}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_count = kernel_count
        self.dilated_kernel_size = _pair(dilated_kernel_size)
        self.stride = _pair(stride)
        self.padding = tuple(s // 2 for s in self.dilated_kernel_size) if padding is None else _pair(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_count))
        self.P = nn.Parameter(torch.empty(2, out_channels, in_channels // groups, kernel_count))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.deployed = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        conv_default_init_(self.weight, self.bias)
        with torch.no_grad():
            nn.init.normal_(self.P, 0, 0.5)
            self.clamp_parameters()

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """Keep every position inside the window (the official `clamp_parameters`)."""
        sh, sw = self.dilated_kernel_size
        self.P[0].clamp_(-(sw // 2), sw // 2)
        self.P[1].clamp_(-(sh // 2), sh // 2)

    def kernel(self) -> torch.Tensor:
        """The dense (C_out, C_in/groups, sh, sw) kernel."""
        if self.deployed:
            return self.dense_weight
        sh, sw = self.dilated_kernel_size
        # (column, row) of each tap relative to the window centre, (2, sh, sw, 1, 1, 1)
        rows = torch.arange(sh, device=self.P.device, dtype=self.P.dtype) - sh // 2
        cols = torch.arange(sw, device=self.P.device, dtype=self.P.dtype) - sw // 2
        grid = torch.stack((cols.expand(sh, sw), rows[:, None].expand(sh, sw)))[..., None, None, None]
        B = (1 - (grid - self.P[:, None, None]).abs()).relu().prod(0)  # (sh, sw, O, I, E)
        B = B / (B.sum((0, 1)) + 1e-7)
        return (B * self.weight).sum(-1).permute(2, 3, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.kernel().to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv2d(x, w, b, self.stride, self.padding, 1, self.groups)

    @torch.no_grad()
    def materialize(self) -> None:
        """Deploy form: keep the dense interpolated kernel, drop weight and positions."""
        if not self.deployed:
            self.register_buffer("dense_weight", self.kernel().detach().clone())
            del self.weight, self.P
            self.deployed = True

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_count={self.kernel_count}, "
                f"dilated_kernel_size={self.dilated_kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"groups={self.groups}, bias={self.bias is not None}, deployed={self.deployed}")
