"""Recursive gated convolution, gnConv (HorNet, Rao et al., arXiv 2207.14284)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class GnConv(nn.Module):
    """g^n Conv: order-n spatial interactions from gated convolutions applied recursively.

    With C_k = C / 2^(n-1-k) (k = 0..n-1), a 1x1 conv phi_in maps C -> 2C channels, split into p_0 (C_0) and
    q_0..q_{n-1} (C_0..C_{n-1}). A depthwise spatial mixer f runs on all the q's at once and is scaled by
    s = 1/alpha; then p_1 = s f(q_0) * p_0 and p_{k+1} = s f(q_k) * g_k(p_k), g_k a 1x1 conv C_{k-1} -> C_k.
    The output is phi_out(p_n), a 1x1 conv C -> C.

    spatial_mixer: a factory `f(channels) -> module` for f; None gives the paper's depthwise
        `kernel_size` conv with bias; HorNet-GF passes `partial(GlobalLocalFilter, h=.., w=..)`.
    Other keyword arguments are ignored, so gnConv plugs into the MetaFormer skeleton as a token mixer.
    """

    channels_last = False

    def __init__(self, dim: int, order: int = 5, spatial_mixer: Callable[[int], nn.Module] | None = None,
                 kernel_size: int = 7, scale: float = 1 / 3) -> None:
        super().__init__()
        if order < 1 or dim % 2 ** (order - 1):
            raise ValueError(f"gnConv of order {order} needs dim divisible by 2^(order-1) = "
                             f"{2 ** max(order - 1, 0)}; got dim={dim}")
        self.order = order
        self.dims = tuple(dim // 2 ** k for k in reversed(range(order)))  # C_0 < ... < C_{n-1} = C
        self.split_sizes = (self.dims[0], sum(self.dims))
        self.scale = scale
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        if spatial_mixer is None:
            self.dwconv = nn.Conv2d(sum(self.dims), sum(self.dims), kernel_size, padding=(kernel_size - 1) // 2,
                                    groups=sum(self.dims))
        else:
            self.dwconv = spatial_mixer(sum(self.dims))
        self.pws = nn.ModuleList(nn.Conv2d(self.dims[k], self.dims[k + 1], 1) for k in range(order - 1))
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(self.proj_in(x), self.split_sizes, dim=1)
        dw = torch.split(self.dwconv(q) * self.scale, self.dims, dim=1)
        p = p * dw[0]
        for g, f_q in zip(self.pws, dw[1:], strict=False):
            p = g(p) * f_q
        return self.proj_out(p)

    def extra_repr(self) -> str:
        return f"order={self.order}, dims={self.dims}, scale={self.scale:.4f}"
