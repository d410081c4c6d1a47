"""Gated positional self-attention, GPSA (d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft
Convolutional Inductive Biases", arXiv 2103.10697).

Each head mixes content attention with a positional attention that depends only on the relative offset
(dx, dy, dx^2 + dy^2) between tokens, through a learned gate g_h = sigmoid(gating_param_h):

    A_h = (1 - g_h) softmax(q k^T / sqrt(d)) + g_h softmax(r . w_h)          (rows sum to 1)
    out = proj(A v)

The two softmaxes are explicit, not `scaled_dot_product_attention`: SDPA would give (1 - g) SDPA(q, k, v) +
g softmax(r . w) v, the same values but a second N x N x C product per block (+5.6% MACs on ConViT-Ti), whereas
mixing the two attention matrices first needs one A v. The positional softmax is input-independent (one N x N
matrix per head per forward). The official code renormalises A by its row sums, which are 1 up to rounding: skipped.
With the local init (`local_init`), v is the identity and head h's positional
attention peaks at offset h of a sqrt(heads) x sqrt(heads) patch, scaled by `locality_strength`: a convolution.
Input and output are channels-last maps (B, H, W, C) of patch tokens (no class token: ConViT joins it later).
"""
from __future__ import annotations

import torch
from torch import nn


def relative_offsets(h: int, w: int) -> torch.Tensor:
    """(1, N, N, 3) with N = h * w row-major tokens: (dx, dy, dx^2 + dy^2) of token j relative to token i."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    dx = xs[None, :] - xs[:, None]
    dy = ys[None, :] - ys[:, None]
    return torch.stack([dx, dy, dx ** 2 + dy ** 2], dim=-1).unsqueeze(0)


class GPSA(nn.Module):
    """Gated positional self-attention on a channels-last map (B, H, W, C) of any grid.

    The relative offsets are made in forward from the map's grid (a few N x N x 3 values, no buffer: a meta-device
    build that takes a checkpoint's tensors has nothing left to materialise)."""

    channels_last = True

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, locality_strength: float = 1.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.locality_strength = locality_strength
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gating_param = nn.Parameter(torch.ones(num_heads))

    def positional_attention(self, h: int, w: int) -> torch.Tensor:
        """softmax over keys of the positional scores, (1, heads, N, N)."""
        rel = relative_offsets(h, w).to(self.pos_proj.weight)
        return self.pos_proj(rel).permute(0, 3, 1, 2).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        N = H * W
        q, k = self.qk(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        gate = torch.sigmoid(self.gating_param).view(1, -1, 1, 1)
        content = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        attn = (1.0 - gate) * content + gate * self.positional_attention(H, W)
        out = attn @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, H, W, C)))

    @torch.no_grad()
    def local_init(self) -> None:
        """The paper's convolutional init: v = identity; head (h1, h2) of a sqrt(heads)-wide patch attends to
        offset (h1 - c, h2 - c) with strength `locality_strength`."""
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        k = int(self.num_heads ** 0.5)
        center = (k - 1) / 2 if k % 2 == 0 else k // 2
        for h1 in range(k):
            for h2 in range(k):
                pos = h1 + k * h2
                self.pos_proj.weight[pos, 2] = -1
                self.pos_proj.weight[pos, 1] = 2 * (h1 - center)
                self.pos_proj.weight[pos, 0] = 2 * (h2 - center)
        self.pos_proj.weight.mul_(self.locality_strength)
