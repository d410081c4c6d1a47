"""LS (Large-Small) convolution (Wang et al., "LSNet: See Large, Focus Small", CVPR 2025, arXiv 2503.23135).

"See large": large-kernel perception (LKP) looks at a wide neighbourhood through a 7x7 depthwise conv and emits,
for every position, a small k x k kernel per group of channels. "Focus small": small-kernel aggregation (SKA)
applies those per-position kernels to the input's k x k neighbourhood (zero padding), like a depthwise conv whose
weights change from pixel to pixel.

The official repository computes SKA with a Triton kernel; `ska` below is the same arithmetic in plain PyTorch
(`F.unfold` and one batched contraction, which `convscope.analysis.count` prices as k*k MACs per output element,
the figure the official `flops.py` charges by swapping SKA for an equivalent depthwise conv). Channel `c` of the
input uses weight channel `c % Cw`: the weights are shared by *interleaved* channel groups (channels r, r + Cw,
r + 2 Cw, ...), not by contiguous blocks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..conv_bn import ConvBnAct


def ska(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Small-kernel aggregation: out[b, c, i, j] = sum_{u,v} x[b, c, i+u-p, j+v-p] * weight[b, c % Cw, u*k+v, i, j].

    x: (B, C, H, W); weight: (B, Cw, k*k, H, W) with C a multiple of Cw and k odd; zero padding p = (k-1)//2.
    """
    B, C, H, W = x.shape
    if weight.ndim != 5 or weight.shape[0] != B or tuple(weight.shape[-2:]) != (H, W):
        raise ValueError(f"ska weight must be (B, Cw, k*k, H, W) = ({B}, Cw, k*k, {H}, {W}); got "
                         f"{tuple(weight.shape)}")
    cw, kk = weight.shape[1:3]
    k = math.isqrt(kk)
    if k * k != kk or k % 2 == 0 or C % cw:
        raise ValueError(f"ska needs an odd square kernel and C a multiple of Cw; got C={C}, Cw={cw}, k*k={kk}")
    cols = F.unfold(x, k, padding=(k - 1) // 2).view(B, C // cw, cw, kk, H * W)  # channel c = g * Cw + r
    out = torch.einsum("bgrkn,brkn->bgrn", cols, weight.reshape(B, cw, kk, H * W))
    return out.reshape(B, C, H, W)


class LargeKernelPerception(nn.Module):
    """LKP: 1x1 conv-BN (C -> C/2) -> ReLU -> depthwise lks x lks conv-BN -> 1x1 conv-BN -> ReLU ->
    1x1 conv (with bias) to sks*sks*C/groups channels -> GroupNorm(C/groups groups); returned as the
    (B, C/groups, sks*sks, H, W) kernels SKA applies. Keys follow the official `LKP` (cv1..cv4, norm)."""

    def __init__(self, dim: int, lks: int = 7, sks: int = 3, groups: int = 8) -> None:
        super().__init__()
        if dim % groups or dim % 2:
            raise ValueError(f"LKP needs dim divisible by 2 and by groups={groups}; got dim={dim}")
        hidden, self.wc, self.sks = dim // 2, dim // groups, sks
        self.cv1 = ConvBnAct(dim, hidden, 1, act_layer=nn.ReLU)
        self.cv2 = ConvBnAct(hidden, hidden, lks, groups=hidden)
        self.cv3 = ConvBnAct(hidden, hidden, 1, act_layer=nn.ReLU)
        self.cv4 = nn.Conv2d(hidden, sks * sks * self.wc, 1)
        self.norm = nn.GroupNorm(self.wc, sks * sks * self.wc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.norm(self.cv4(self.cv3(self.cv2(self.cv1(x)))))
        return w.unflatten(1, (self.wc, self.sks * self.sks))


class LSConv(nn.Module):
    """BN(SKA(x, LKP(x))): the LS convolution without its shortcut (LSNet's block adds x). NCHW in and out.

    dim: channels (a multiple of 2 and of `groups`); lks: LKP's depthwise kernel (7); sks: SKA's kernel (3);
    groups: channels sharing one generated kernel (8), interleaved as `ska` describes.
    `convscope.deploy.reparameterize_` folds LKP's three BatchNorms into their convs; the BN after SKA stays
    (its channels do not map onto the shared kernels), as in the official deploy form.
    """

    channels_last = False

    def __init__(self, dim: int, lks: int = 7, sks: int = 3, groups: int = 8) -> None:
        super().__init__()
        self.lkp = LargeKernelPerception(dim, lks, sks, groups)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(ska(x, self.lkp(x)))
