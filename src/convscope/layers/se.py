"""Squeeze-and-Excitation (Hu et al., arXiv 1709.01507)."""
from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool -> 1x1 conv (reduce) -> act -> 1x1 conv (expand) -> gate,
    multiplied onto the input. Biased convs, as in UniRepLKNet's SE block."""

    def __init__(self, channels: int, rd_channels: int, act_layer: type[nn.Module] = nn.ReLU,
                 gate_layer: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(self.act(self.fc1(s)))
        return x * self.gate(s)
