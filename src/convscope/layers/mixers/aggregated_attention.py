"""Aggregated attention (TransNeXt, Shi, "TransNeXt: Robust Foveal Visual Perception for Vision Transformers",
CVPR 2024, arXiv 2311.17132).

Every query attends, through one softmax, to two sets of keys:
- its k x k neighbourhood (pixel-focused sliding window, zero-padded at the border and masked out there) with a
  learned per-head relative-position bias, and
- the H/sr x W/sr map of pooled tokens (1x1 conv -> GELU -> adaptive average pool -> LayerNorm, then the shared
  kv projection) with a continuous relative-position bias from an MLP (2 -> 512 -> heads) on log-spaced
  relative coordinates.
Queries and keys are L2-normalised (cosine attention); the query gets a learnable embedding added and is scaled
by softplus(temperature) * log(number of keys it sees) ("length-scaled"). The local weights also get a
query-dependent "learnable token" term q_norm @ T + b added after the softmax.

The sliding window is plain PyTorch (F.unfold), the maths of the official CUDA-free `attention_native.py`.
The position tables depend on the input size the module is built for (`input_resolution`).
`LengthScaledAttention` is the full-attention form of the last stage (sr = 1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_position_cpb(query_size: tuple[int, int], key_size: tuple[int, int],
                          pretrain_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, table) of the continuous position bias, built on the CPU.

    Key positions are the average-pooled query positions; the offsets (query - key) are divided by
    (pretrain side - 1) and multiplied by 8, then log-spaced: sign(t) * log2(|t| + 1) / log2(8). `table` holds each
    distinct offset pair once, in lexicographic order, `index` (Nq * Nk,) points into it.

    Both grids are full, so every row offset meets every column offset: the distinct pairs are the product of each
    axis's distinct offsets, found per axis (what `torch.unique(pairs, dim=0)` over all Nq * Nk pairs returns, at
    a fraction of its cost at 384 px).
    """
    pretrain_size = pretrain_size or query_size
    values, inverse = [], []
    for q, k, p in zip(query_size, key_size, pretrain_size, strict=False):
        aq = torch.arange(q, dtype=torch.float32, device="cpu")
        ak = F.adaptive_avg_pool1d(aq[None], k)[0]
        u, inv = torch.unique((aq[:, None] - ak[None, :]) / (p - 1) * 8, return_inverse=True)
        values.append(u)
        inverse.append(inv)
    (uh, uw), (ih, iw) = values, inverse
    index = (ih[:, None, :, None] * len(uw) + iw[None, :, None, :]).reshape(-1)
    table = torch.stack(torch.meshgrid(uh, uw, indexing="ij"), dim=-1).reshape(-1, 2)
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    return index, table


def _on(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A size-derived table (built on the CPU) on the device of `ref` (a no-op once the model is moved)."""
    return t if t.device == ref.device else t.to(ref.device)


def _softplus_init(num_heads: int) -> torch.Tensor:
    """The temperature whose softplus is 1 / 0.24."""
    return torch.log(torch.expm1(torch.full((num_heads, 1, 1), 1 / 0.24)))


class AggregatedAttention(nn.Module):
    """Aggregated (pixel-focused + pooled) attention on (B, N, C) tokens of an H x W map.

    dim, num_heads; input_resolution: the (H, W) the module is built for (pool size (H // sr, W // sr));
    sr_ratio: the pooling factor; window_size: the odd side of the sliding window.
    `forward(x, H, W, rel_index, rel_table)` takes the stage's `relative_position_cpb` tables.
    """

    channels_last = True

    def __init__(self, dim: int, num_heads: int, input_resolution: tuple[int, int], sr_ratio: int,
                 window_size: int = 3, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if window_size % 2 != 1:
            raise ValueError(f"window_size must be odd; got {window_size}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.local_len = window_size ** 2
        self.pool_size = (input_resolution[0] // sr_ratio, input_resolution[1] // sr_ratio)
        if min(self.pool_size) < 1:
            raise ValueError(f"input resolution {input_resolution} is smaller than sr_ratio {sr_ratio}")
        self.pool_len = self.pool_size[0] * self.pool_size[1]

        self.temperature = nn.Parameter(_softplus_init(num_heads))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim), std=0.02))
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr = nn.Conv2d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)  # eps 1e-5, as in the official code
        self.act = nn.GELU()
        self.cpb_fc1 = nn.Linear(2, 512)
        self.cpb_fc2 = nn.Linear(512, num_heads)
        self.relative_pos_bias_local = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, self.local_len), std=0.0004))
        self.learnable_tokens = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, self.head_dim, self.local_len), std=0.02))
        self.learnable_bias = nn.Parameter(torch.zeros(num_heads, 1, self.local_len))

        # Which window slots fall outside the map, and the log of how many keys each query sees.
        ones = torch.ones(1, 1, *input_resolution, device="cpu")
        inside = F.unfold(ones, window_size, padding=window_size // 2)[0].t()  # (N, L)
        self.register_buffer("padding_mask", inside == 0, persistent=False)
        self.register_buffer("seq_length_scale", torch.log(inside.sum(-1, keepdim=True) + self.pool_len),
                             persistent=False)

    def forward(self, x: torch.Tensor, H: int, W: int, rel_index: torch.Tensor,
                rel_table: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        n, d, L, P = self.num_heads, self.head_dim, self.local_len, self.pool_len
        q_norm = F.normalize(self.q(x).view(B, N, n, d).transpose(1, 2), dim=-1)        # (B, n, N, d)
        q_scaled = (q_norm + self.query_embedding) * F.softplus(self.temperature) * _on(self.seq_length_scale, x)

        # sliding window: unfold normalised keys and values over the k x k neighbourhood
        k, v = self.kv(x).chunk(2, dim=-1)
        k = F.normalize(k.view(B, N, n, d), dim=-1).view(B, N, C)
        kv = torch.cat([k, v], dim=-1).transpose(1, 2).reshape(B, 2 * C, H, W)
        kv = F.unfold(kv, self.window_size, padding=self.window_size // 2)              # (B, 2C * L, N)
        k_local, v_local = kv.view(B, 2 * n, d, L, N).permute(0, 1, 4, 2, 3).chunk(2, dim=1)  # (B, n, N, d, L)
        attn_local = (q_scaled.unsqueeze(-2) @ k_local).squeeze(-2) + self.relative_pos_bias_local.unsqueeze(1)
        attn_local = attn_local.masked_fill(_on(self.padding_mask, x), float("-inf"))  # (B, n, N, L)

        # pooled keys and values
        pooled = x.transpose(1, 2).reshape(B, C, H, W)
        pooled = F.adaptive_avg_pool2d(self.act(self.sr(pooled)), self.pool_size).flatten(2).transpose(1, 2)
        k_pool, v_pool = self.kv(self.norm(pooled)).view(B, P, 2 * n, d).transpose(1, 2).chunk(2, dim=1)
        bias = self.cpb_fc2(torch.relu(self.cpb_fc1(_on(rel_table, x)))).transpose(0, 1)
        bias = bias[:, _on(rel_index, x)].view(n, N, P)
        attn_pool = q_scaled @ F.normalize(k_pool, dim=-1).transpose(-2, -1) + bias     # (B, n, N, P)

        attn = self.attn_drop(torch.cat([attn_local, attn_pool], dim=-1).softmax(dim=-1))
        attn_local, attn_pool = attn.split([L, P], dim=-1)
        w_local = (q_norm @ self.learnable_tokens) + self.learnable_bias + attn_local     # (B, n, N, L)
        out = (w_local.unsqueeze(-2) @ v_local.transpose(-2, -1)).squeeze(-2) + attn_pool @ v_pool
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
