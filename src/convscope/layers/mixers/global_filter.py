"""Global-local filter (HorNet, Rao et al., arXiv 2207.14284), the spatial mixer of HorNet-GF."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..norm import LayerNorm2d


class GlobalLocalFilter(nn.Module):
    """Half the channels through a local depthwise 3x3 conv, half through a learned global filter in the
    frequency domain (GFNet's rfft2 -> complex weight -> irfft2), interleaved channel by channel, between two
    channels-first LayerNorms.

    The complex weight is learned for one spectrum size (`h`, `w`): that of an (h, 2(w-1)) map, e.g. (14, 8)
    for a 14x14 map. Inputs of another size use the weight resized bilinearly (align_corners=True) to their
    spectrum, so any input size works. The FFT runs in at least float32 (the official code casts to float32).
    """

    channels_last = False

    def __init__(self, dim: int, h: int = 14, w: int = 8) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"GlobalLocalFilter splits its channels in half; dim must be even, got {dim}")
        half = dim // 2
        self.split_sizes = (half, half)
        self.pre_norm = LayerNorm2d(dim)
        self.dw = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.complex_weight = nn.Parameter(torch.empty(half, h, w, 2))
        nn.init.trunc_normal_(self.complex_weight, std=0.02, a=-2.0, b=2.0)
        self.post_norm = LayerNorm2d(dim)

    def global_filter(self, x: torch.Tensor) -> torch.Tensor:
        """irfft2(rfft2(x) * W) with W resized to x's spectrum (align_corners=True is exact at the built size)."""
        H, W = x.shape[-2:]
        real = x.to(torch.promote_types(x.dtype, torch.float32))
        spectrum = torch.fft.rfft2(real, dim=(2, 3), norm="ortho")
        weight = self.complex_weight.to(real.dtype).permute(3, 0, 1, 2)  # (2, C, h, w): re/im as the batch
        weight = F.interpolate(weight, size=spectrum.shape[-2:], mode="bilinear", align_corners=True)
        weight = torch.view_as_complex(weight.permute(1, 2, 3, 0).contiguous())
        return torch.fft.irfft2(spectrum * weight, s=(H, W), dim=(2, 3), norm="ortho").to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        x_local, x_global = torch.split(x, self.split_sizes, dim=1)
        x_local, x_global = self.dw(x_local), self.global_filter(x_global)
        B, C, H, W = x_global.shape
        # channel 2k is local channel k, channel 2k+1 global channel k
        x = torch.stack((x_local, x_global), dim=2).reshape(B, 2 * C, H, W)
        return self.post_norm(x)
