"""Activations introduced by the MetaFormer papers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StarReLU(nn.Module):
    """StarReLU, s * relu(x)^2 + b with learnable scalars s and b (MetaFormer Baselines, arXiv 2210.13452)."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0, learnable: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), scale_value), requires_grad=learnable)
        self.bias = nn.Parameter(torch.full((1,), bias_value), requires_grad=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x) ** 2 + self.bias


class SquaredReLU(nn.Module):
    """relu(x)^2 (Primer, arXiv 2109.08668); the activation of MetaFormer's MLP head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))
