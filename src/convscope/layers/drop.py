"""Stochastic depth."""
from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Drop the residual branch per sample with probability `drop_prob`, rescaling the survivors
    (stochastic depth, Huang et al. 2016)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_or_identity(drop_prob: float) -> nn.Module:
    return DropPath(drop_prob) if drop_prob > 0 else nn.Identity()
