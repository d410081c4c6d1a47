"""Length-scaled cosine attention (TransNeXt's full attention, Shi, arXiv 2311.17132).

Multi-head self-attention over (B, N, C) tokens in which queries and keys are L2-normalised, the query gets a
learnable embedding added and is scaled by softplus(temperature) * log(N), and a continuous relative-position
bias (an MLP 2 -> 512 -> heads on log-spaced relative coordinates, see
`aggregated_attention.relative_position_cpb`) is added to the logits. TransNeXt uses it in the last stage,
where the aggregated attention's pooling would be the identity. Runs through scaled_dot_product_attention
(scale 1, the bias as an additive mask).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .aggregated_attention import _on, _softplus_init


class LengthScaledAttention(nn.Module):
    """Full length-scaled cosine attention over the N = H * W tokens of the map it is built for."""

    channels_last = True
    # whole heads for structured pruning (convscope.deploy.prune): qkv, proj, per-head parameters and layers
    prune_heads = ("qkv", "proj", ("temperature", "query_embedding", "cpb_fc2"))

    def __init__(self, dim: int, num_heads: int, input_resolution: tuple[int, int], qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.seq_length_scale = math.log(input_resolution[0] * input_resolution[1])
        self.attn_drop = attn_drop
        self.temperature = nn.Parameter(_softplus_init(num_heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim), std=0.02))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.cpb_fc1 = nn.Linear(2, 512)
        self.cpb_fc2 = nn.Linear(512, num_heads)

    def forward(self, x: torch.Tensor, H: int, W: int, rel_index: torch.Tensor,
                rel_table: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        n, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, N, 3 * n, d).transpose(1, 2).chunk(3, dim=1)
        bias = self.cpb_fc2(torch.relu(self.cpb_fc1(_on(rel_table, x)))).transpose(0, 1)
        bias = bias[:, _on(rel_index, x)].view(n, N, N)
        q = (F.normalize(q, dim=-1) + self.query_embedding) * (F.softplus(self.temperature) * self.seq_length_scale)
        x = F.scaled_dot_product_attention(q, F.normalize(k, dim=-1), v, attn_mask=bias.to(q.dtype),
                                           dropout_p=self.attn_drop if self.training else 0.0, scale=1.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, n * d)))
