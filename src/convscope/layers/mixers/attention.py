"""Multi-head self-attention token mixer (Vaswani et al., arXiv 1706.03762), as CAFormer uses it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Global multi-head self-attention over (B, N, C) tokens.

    Heads are `dim // head_dim` (at least one) unless `num_heads` is given; MetaFormer uses head_dim 32 and no
    biases. Runs through `scaled_dot_product_attention`, so fused kernels are used where available.
    """

    channels_last = True

    def __init__(self, dim: int, head_dim: int = 32, num_heads: int | None = None, qkv_bias: bool = False,
                 proj_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads or max(dim // head_dim, 1)
        self.attn_dim = self.num_heads * head_dim
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias)
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(x))
