"""Outlook attention (Yuan et al., "VOLO: Vision Outlooker for Visual Recognition", arXiv 2106.13112).

Around every location of a stride-`stride` grid, a k x k window of values is re-mixed by a k^2 x k^2 attention
matrix that a linear layer predicts from the (average-pooled) centre token alone, with no query-key product:

    A = softmax(Linear(pool(x)) * head_dim^-0.5)            (B, heads, h*w, k^2, k^2), softmax over the last axis
    out = proj(fold(A @ unfold(v(x))))                      windows summed back where they overlap

Because the weights are generated rather than computed as q.k^T, `scaled_dot_product_attention` does not apply.
`unfold` / `fold` are F.unfold / F.fold (im2col / col2im): ONNX exports im2col from opset 11 and col2im (Col2Im)
from opset 18. Input and output are channels-last maps (B, H, W, C).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class OutlookAttention(nn.Module):
    """Outlook attention on a channels-last map (B, H, W, C); `dim` must be a multiple of `num_heads`."""

    channels_last = True

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, padding: int = 1, stride: int = 1,
                 qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel_size, self.padding, self.stride = kernel_size, padding, stride
        self.scale = self.head_dim ** -0.5
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn = nn.Linear(dim, kernel_size ** 4 * num_heads)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        k2, s, nh = self.kernel_size ** 2, self.stride, self.num_heads
        h, w = math.ceil(H / s), math.ceil(W / s)
        v = F.unfold(self.v(x).permute(0, 3, 1, 2), self.kernel_size, padding=self.padding, stride=s)
        v = v.reshape(B, nh, self.head_dim, k2, h * w).permute(0, 1, 4, 3, 2)           # B, heads, N, k2, hd
        a = F.avg_pool2d(x.permute(0, 3, 1, 2), s, s, ceil_mode=True).permute(0, 2, 3, 1) if s > 1 else x
        a = self.attn(a).reshape(B, h * w, nh, k2, k2).permute(0, 2, 1, 3, 4)           # B, heads, N, k2, k2
        a = self.attn_drop((a * self.scale).softmax(dim=-1))
        out = (a @ v).permute(0, 1, 4, 3, 2).reshape(B, C * k2, h * w)
        out = F.fold(out, (H, W), self.kernel_size, padding=self.padding, stride=s)
        return self.proj_drop(self.proj(out.permute(0, 2, 3, 1)))
