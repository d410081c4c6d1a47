"""Parameterised hypercomplex (PHM) convolution (Grassucci, Zhang and Comminiello, "PHNNs: Lightweight Neural
Networks via Parameterized Hypercomplex Convolutions", IEEE TNNLS 2022, arXiv 2110.04176; after Zhang et al.,
"Beyond Fully-Connected Layers with Quaternions: Parameterization of Hypercomplex Multiplications with 1/n
Parameters", ICLR 2021).

The kernel is a sum of Kronecker products, W = sum_{i=1..n} A_i (x) F_i, with A_i an n x n matrix that learns the
algebra's multiplication rule and F_i an (out/n, in/n, k, k) filter bank. It has n^3 + out*in*k^2/n parameters,
1/n of a real convolution's (plus n^3), and n = 4 with A fixed to the Hamilton rules gives a quaternion conv.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair


class PHMConv2d(nn.Module):
    """2-D PHM convolution; in_channels and out_channels must be multiples of n."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], n: int = 4,
                 stride: int = 1, padding: int | str = 0, dilation: int = 1, bias: bool = True) -> None:
        super().__init__()
        if in_channels % n or out_channels % n:
            raise ValueError(f"in_channels and out_channels must be multiples of n={n}; "
                             f"got {in_channels} and {out_channels}")
        self.n, self.stride, self.padding, self.dilation = n, stride, padding, dilation
        k = _pair(kernel_size)
        self.A = nn.Parameter(torch.empty(n, n, n))
        self.F = nn.Parameter(torch.empty(n, out_channels // n, in_channels // n, *k))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.xavier_uniform_(self.A.view(n * n, n))
        nn.init.kaiming_uniform_(self.F.view(n * out_channels // n, -1), a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        """The full (out, in, kh, kw) kernel sum_i kron(A_i, F_i)."""
        n, o, i = self.F.shape[:3]
        w = torch.einsum("sab,sopxy->aobpxy", self.A, self.F)
        return w.reshape(n * o, n * i, *self.F.shape[3:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype),
                        self.stride, self.padding, self.dilation)
