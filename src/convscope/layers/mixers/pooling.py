"""Pooling token mixer (PoolFormer, arXiv 2111.11418)."""
from __future__ import annotations

import torch
from torch import nn


class Pooling(nn.Module):
    """avgpool_{k x k, stride 1}(x) - x. The subtraction removes the input, which the block's residual
    connection adds back. Padding is excluded from the average (count_include_pad=False)."""

    channels_last = False

    def __init__(self, dim: int | None = None, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x
