"""Single-image super-resolution models, created by name (`create_sr_model`): ESPCN (Shi et al., CVPR 2016,
arXiv 1609.05158: conv 5x5-64, tanh, conv 3x3-32, tanh, conv 3x3 to C * r^2, pixel shuffle; `ops.ESPCN`) and
`LargeKernelSR`, a lightweight large-kernel network in the spirit of ConvFormer-SR built from the zoo's mixers.

Every model maps a low-resolution image (B, C, H, W) to (B, C, rH, rW) for its `upscale` r.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..layers.mixers import DWConvMixer
from ..ops.subpixel import ESPCN, SubPixelConv2d

#: Upscaling factors the SR models are built for.
SR_SCALES = (2, 3, 4)


class LargeKernelBlock(nn.Module):
    """x + dwconv_k(x), then x + MLP(x) (1x1 conv, GELU, 1x1 conv), each branch scaled by a learned per-channel
    layer scale; no normalisation (it would rescale intensities, which SR must keep)."""

    def __init__(self, dim: int, kernel_size: int = 13, mlp_ratio: float = 2.0, init_scale: float = 0.1) -> None:
        super().__init__()
        hidden = round(dim * mlp_ratio)
        self.mixer = DWConvMixer(dim, kernel_size)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.gamma1 = nn.Parameter(torch.full((dim, 1, 1), init_scale))
        self.gamma2 = nn.Parameter(torch.full((dim, 1, 1), init_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1 * self.mixer(x)
        return x + self.gamma2 * self.mlp(x)


class LargeKernelSR(nn.Module):
    """conv 3x3 to `dim`, `depth` large-kernel blocks, conv 3x3, a sub-pixel conv to C * r^2 channels and pixel
    shuffle, added to the bicubic upsampling of the input (global residual: the network learns the detail
    bicubic misses)."""

    def __init__(self, upscale: int = 2, in_chans: int = 1, dim: int = 32, depth: int = 4,
                 kernel_size: int = 13, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.upscale = upscale
        self.stem = nn.Conv2d(in_chans, dim, 3, padding=1)
        self.blocks = nn.Sequential(*[LargeKernelBlock(dim, kernel_size, mlp_ratio) for _ in range(depth)])
        self.fuse = nn.Conv2d(dim, dim, 3, padding=1)
        self.upsample = SubPixelConv2d(dim, in_chans, upscale, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.stem(x)
        feats = feats + self.fuse(self.blocks(feats))
        base = F.interpolate(x, scale_factor=self.upscale, mode="bicubic", align_corners=False)
        return base + self.upsample(feats)


#: SR models by name: constructor (upscale, in_chans) -> module.
SR_MODELS: Mapping[str, Callable[..., nn.Module]] = {"espcn": ESPCN, "lksr": LargeKernelSR}


def create_sr_model(name: str, upscale: int, in_chans: int = 1) -> nn.Module:
    """The SR model `name` (from `SR_MODELS`) for `upscale` (2, 3 or 4) and `in_chans` (1 or 3) channels."""
    if name not in SR_MODELS:
        raise ValueError(f"unknown super-resolution model {name!r}; choose one of {', '.join(SR_MODELS)}")
    if upscale not in SR_SCALES:
        raise ValueError(f"upscale must be one of {SR_SCALES}; got {upscale!r}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3; got {in_chans!r}")
    return SR_MODELS[name](upscale=upscale, in_chans=in_chans)
