"""GLMix token mixer (Zhu et al., "Revisiting the Integration of Convolution and Attention for Vision Backbone",
NeurIPS 2024, arXiv 2411.14429; official code rayleizhu/GLMix).

Two branches on the same normalised NCHW map x (B, C, H, W), summed:

- local: a convolution on the grid, 1x1 -> depthwise k x k -> 1x1 (all biased);
- global: soft clustering into S semantic slots, multi-head self-attention among the slots, dispatch back:

      logits = scale * normalize(slots0) @ normalize(X)^T        (B, S, HW), X the HW tokens, cosine similarity
      slots  = softmax_HW(logits) @ X                            (B, S, C)   each slot a soft mean of the grid
      slots  = MHSA(slots)                                       (in_proj with bias, out_proj)
      out    = softmax_S(logits^T) @ slots                       (B, HW, C)  each position a soft mix of slots

  with `scale` a learnt scalar (init C^-1/2) and the initial slots slots0 either a learnt (S, C) parameter or
  the S = P*P cells of an adaptive average pool of the block's input (passed in by the block, `init_slots`).
Attention runs through `scaled_dot_product_attention`; the keys follow the official layout.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SlotAttention(nn.Module):
    """nn.MultiheadAttention's arithmetic and parameter names (in_proj_weight / in_proj_bias / out_proj) on
    (B, N, C) tokens, self-attention only, through scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be a multiple of num_heads={num_heads}; got {dim}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).reshape(
            B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(x.transpose(1, 2).reshape(B, N, C))


class GLMix(nn.Module):
    """Local conv branch + soft-clustered slot attention branch (see the module docstring); NCHW in and out.

    `slot_init="ada_avgpool"`: the initial slots are given to `forward` (the pooled block input); "param": a
    learnt (1, num_slots, dim) parameter `init_slots`.
    """

    channels_last = False

    def __init__(self, dim: int, num_heads: int | None = None, head_dim: int = 32, num_slots: int = 64,
                 slot_init: str = "ada_avgpool", local_kernel_size: int = 5, slot_scale: float | None = None,
                 learnable_scale: bool = True) -> None:
        super().__init__()
        if slot_init not in ("ada_avgpool", "param"):
            raise ValueError(f"slot_init must be 'ada_avgpool' or 'param'; got {slot_init!r}")
        if slot_init == "ada_avgpool" and math.isqrt(num_slots) ** 2 != num_slots:
            raise ValueError(f"pooled slots need a square num_slots; got {num_slots}")
        self.slot_init = slot_init
        self.pool_size = math.isqrt(num_slots)
        scale = torch.tensor(slot_scale or dim ** -0.5)
        if learnable_scale:
            self.slot_scale = nn.Parameter(scale)
        else:
            self.register_buffer("slot_scale", scale)
        if slot_init == "param":
            self.init_slots = nn.Parameter(torch.empty(1, num_slots, dim))
            nn.init.normal_(self.init_slots, std=0.02)
        else:
            self.register_parameter("init_slots", None)
        self.relation_mha = SlotAttention(dim, num_heads or max(dim // head_dim, 1))
        self.feature_conv = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.Conv2d(dim, dim, local_kernel_size, padding=local_kernel_size // 2, groups=dim),
            nn.Conv2d(dim, dim, 1))

    def pooled_slots(self, x: torch.Tensor) -> torch.Tensor:
        """The ada_avgpool initial slots of a map: its P x P adaptive average pool as (B, P*P, C) tokens."""
        return F.adaptive_avg_pool2d(x, self.pool_size).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, init_slots: torch.Tensor | None = None) -> torch.Tensor:
        if self.init_slots is not None:
            init_slots = self.init_slots
        elif init_slots is None:
            init_slots = self.pooled_slots(x)
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)                                              # (B, HW, C)
        logits = F.normalize(init_slots, dim=-1) @ (self.slot_scale * F.normalize(tokens, dim=-1)).transpose(1, 2)
        slots = self.relation_mha(logits.softmax(-1) @ tokens)                             # (B, S, C)
        out = logits.transpose(1, 2).softmax(-1) @ slots                                   # (B, HW, C)
        return out.transpose(1, 2).reshape(B, C, H, W) + self.feature_conv(x)
