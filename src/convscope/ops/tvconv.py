"""TVConv: translation-variant depthwise convolution (Chen et al., "TVConv: Efficient Translation Variant
Convolution for Layout-aware Visual Processing", CVPR 2022, arXiv 2203.10489; official JierunChen/TVConv).

Every spatial position (i, j) of a fixed-size map gets its own depthwise k x k kernel:

    y[b, c, i, j] = sum_{u, v} W[c, u, v, i, j] * x[b, c, i + u - k//2, j + v - k//2]   (zero padding)

The kernels W (C x k*k per position) are not free parameters: a small weight-generating block maps learnable
*affinity maps* A (1 x posi_chans x h x w, initialised to ones) to them:

    W = conv3x3(inter -> C*k*k)( [conv3x3 -> LayerNorm([inter, h, w]) -> ReLU] x (1 + inter_layers) (A) )

(convolutions without bias; LayerNorm over the whole (channels, h, w) map, as the official `_ConvBlock`). Because A
is input-independent, W is a constant once trained: `materialize()` computes it once, stores it as a buffer and
drops the generating block (the official `TVConv_test`), giving the same outputs with no per-call generation.

TVConv needs a FIXED spatial size (h, w): the affinity maps, the LayerNorm and the kernels are per position.
An input of any other size raises ValueError. Stride 1 (a token mixer); an optional translation-variant bias is
generated the same way (`bias=True`, the official `TVConv_Bias`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _weight_block(in_chans: int, inter_chans: int, out_chans: int, inter_layers: int, h: int, w: int
                  ) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_chans
    for _ in range(1 + inter_layers):
        layers += [nn.Conv2d(c, inter_chans, 3, padding=1, bias=False), nn.LayerNorm([inter_chans, h, w]),
                   nn.ReLU()]
        c = inter_chans
    layers.append(nn.Conv2d(inter_chans, out_chans, 3, padding=1, bias=False))
    return nn.Sequential(*layers)


class TVConv(nn.Module):
    """Translation-variant depthwise k x k convolution on (B, dim, h, w) maps of one fixed size.

    dim: channels; size: the (h, w) of the maps it takes (an int for square); kernel_size: k (odd);
    posi_chans / inter_chans / inter_layers: the affinity maps' channels and the generating block's width and
    extra depth (official defaults 4 / 16 / 1); bias: also generate a per-position, per-channel bias.
    """

    channels_last = False

    def __init__(self, dim: int, size: int | tuple[int, int], kernel_size: int = 3, posi_chans: int = 4,
                 inter_chans: int = 16, inter_layers: int = 1, bias: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"TVConv needs an odd kernel_size; got {kernel_size}")
        self.dim, self.kernel_size = dim, kernel_size
        self.size = _pair(size)
        h, w = self.size
        self.posi_map = nn.Parameter(torch.ones(1, posi_chans, h, w))
        self.weight_layers = _weight_block(posi_chans, inter_chans, dim * kernel_size ** 2, inter_layers, h, w)
        self.bias_layers = _weight_block(posi_chans, inter_chans, dim, inter_layers, h, w) if bias else None
        self.deployed = False

    def kernels(self) -> torch.Tensor:
        """The per-position kernels, (1, dim, k*k, h, w)."""
        if self.deployed:
            return self.weight_maps
        h, w = self.size
        return self.weight_layers(self.posi_map).view(1, self.dim, self.kernel_size ** 2, h, w)

    def biases(self) -> torch.Tensor | None:
        if self.deployed:
            return self.bias_maps
        return None if self.bias_layers is None else self.bias_layers(self.posi_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if (H, W) != self.size:
            raise ValueError(f"TVConv was built for {self.size[0]}x{self.size[1]} maps (its kernels are per "
                             f"position); got {H}x{W}")
        k = self.kernel_size
        cols = F.unfold(x, k, padding=k // 2).view(B, C, k * k, H, W)
        out = (self.kernels().to(x.dtype) * cols).sum(2)
        bias = self.biases()
        return out if bias is None else out + bias.to(x.dtype)

    @torch.no_grad()
    def materialize(self) -> None:
        """Deploy form: generate the kernels (and bias) once, keep them as buffers, drop the generator."""
        if self.deployed:
            return
        weight, bias = self.kernels().detach().clone(), self.biases()
        self.register_buffer("weight_maps", weight)
        self.register_buffer("bias_maps", None if bias is None else bias.detach().clone())
        del self.posi_map, self.weight_layers, self.bias_layers
        self.deployed = True

    def extra_repr(self) -> str:
        return f"{self.dim}, size={self.size}, kernel_size={self.kernel_size}, deployed={self.deployed}"
