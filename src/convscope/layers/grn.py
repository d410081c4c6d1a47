"""Global Response Normalization (ConvNeXt V2, arXiv 2301.00808)."""
from __future__ import annotations

import torch
from torch import nn


class GlobalResponseNorm(nn.Module):
    """x + gamma * (x * N(x)) + beta, where N(x) is each channel's spatial L2 norm divided by its mean over
    channels. Zero-initialised, so the layer starts as the identity. Stored as `weight` (gamma) and `bias`
    (beta) of shape (C,). `bias=False` leaves beta out (UniRepLKNet's deploy form moves it into the next
    layer)."""

    def __init__(self, dim: int, eps: float = 1e-6, channels_last: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.spatial_dims = (1, 2) if channels_last else (2, 3)
        self.channel_dim = -1 if channels_last else 1
        self.affine_shape = (1, 1, 1, dim) if channels_last else (1, dim, 1, 1)
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = x.norm(p=2, dim=self.spatial_dims, keepdim=True)
        nx = gx / (gx.mean(dim=self.channel_dim, keepdim=True) + self.eps)
        if self.bias is None:
            return x + self.weight.view(self.affine_shape) * (x * nx)
        return x + torch.addcmul(self.bias.view(self.affine_shape), self.weight.view(self.affine_shape), x * nx)
