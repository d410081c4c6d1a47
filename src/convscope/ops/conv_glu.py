"""Convolutional GLU (Shi, "TransNeXt: Robust Foveal Visual Perception for Vision Transformers", CVPR 2024,
arXiv 2311.17132; official DaiShiResearch/TransNeXt `ConvolutionalGLU`).

A gated linear unit whose gate branch passes through a 3x3 depthwise conv before its activation, which gives each
token a neighbour-aware, SE-like channel gate: [g, v] = fc1(x); y = fc2(act(dwconv(g)) * v). The hidden width is
2/3 of `hidden_features` so the parameter count matches an MLP of that width. Here fc1 and fc2 are 1x1 convs on an
NCHW map (the same arithmetic as TransNeXt's Linear layers on tokens), so it maps (B, C, H, W) to the same shape.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class ConvGLU(nn.Module):
    """fc1 (C -> 2h) -> split [gate, value] -> act(dwconv3x3(gate)) * value -> dropout -> fc2 (h -> C) -> dropout,
    h = int(2 * hidden_features / 3), hidden_features = mlp_ratio * dim by default."""

    channels_last = False

    def __init__(self, dim: int, hidden_features: int | None = None, out_features: int | None = None,
                 mlp_ratio: float = 4, act_layer: Callable[[], nn.Module] = nn.GELU, drop: float = 0.0,
                 kernel_size: int = 3) -> None:
        super().__init__()
        hidden = int(2 * (hidden_features or int(mlp_ratio * dim)) / 3)
        self.hidden = hidden
        self.fc1 = nn.Conv2d(dim, 2 * hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden, out_features or dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=1)
        x = self.drop(self.act(self.dwconv(gate)) * value)
        return self.drop(self.fc2(x))
