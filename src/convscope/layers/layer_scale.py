"""Per-channel learnable scaling (layer scale, CaiT arXiv 2103.17239; res scale, arXiv 2110.09456).

`LayerScale` is the module. Blocks whose checkpoints (timm's, the official ones) keep the vector as a raw
`gamma` parameter on the block itself (ConvNeXt, HorNet, InceptionNeXt, UniRepLKNet) cannot hold a module
without renaming their keys; they create it with `layer_scale_parameter` and apply it with `layer_scale`, the
same arithmetic `LayerScale` uses.
"""
from __future__ import annotations

import torch
from torch import nn


def layer_scale_parameter(dim: int, init_value: float | None) -> nn.Parameter | None:
    """A per-channel vector filled with `init_value`, or None (no layer scale) when `init_value` is None."""
    return None if init_value is None else nn.Parameter(torch.full((dim,), float(init_value)))


def layer_scale(x: torch.Tensor, gamma: torch.Tensor | None, channels_first: bool = True) -> torch.Tensor:
    """`x * gamma` per channel: dim 1 of an NCHW map when `channels_first`, else the last dimension; None: x."""
    if gamma is None:
        return x
    return x * (gamma.view(-1, 1, 1) if channels_first else gamma)


class LayerScale(nn.Module):
    """Multiply by a learnable per-channel vector `scale`, initialised to `init_value`.

    `channels_first=True` scales dim 1 of an NCHW tensor, otherwise the last dimension.
    """

    def __init__(self, dim: int, init_value: float = 1e-5, channels_first: bool = False) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.scale = layer_scale_parameter(dim, init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_scale(x, self.scale, self.channels_first)
