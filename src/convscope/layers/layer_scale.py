"""Per-channel learnable scaling (layer scale, CaiT arXiv 2103.17239; res scale, arXiv 2110.09456)."""
from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """Multiply by a learnable per-channel vector `scale`, initialised to `init_value`.

    `channels_first=True` scales dim 1 of an NCHW tensor, otherwise the last dimension.
    """

    def __init__(self, dim: int, init_value: float = 1e-5, channels_first: bool = False) -> None:
        super().__init__()
        self.shape = (dim, 1, 1) if channels_first else (dim,)
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(self.shape)
