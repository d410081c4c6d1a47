"""Halo attention (Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
arXiv 2103.12731, Sec. 3).

Blocked local self-attention on an NCHW map: the map is cut into non-overlapping b x b query blocks; each block
attends to the (b + 2h) x (b + 2h) window around it (its "halo" of h pixels on each side, zero-padded at the
border, the padded keys taking part as timm's HaloAttn does). The logits add 2-D relative position logits
q . r_h[dy] + q . r_w[dx] (learned tables of 2(b + 2h) - 1 rows per axis). With stride 2 the queries come from a
strided 1x1 conv (b/2 x b/2 queries per block). Parameter names equal timm's `HaloAttn` (q, kv,
pos_embed.height_rel, pos_embed.width_rel). Runs through `scaled_dot_product_attention`, the relative logits
as its additive mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..helpers import make_divisible


class RelPosEmbed(nn.Module):
    """Tables of relative position vectors, one row per offset -(win - 1) .. win - 1 along each axis."""

    def __init__(self, win_size: int, dim_head: int, std: float) -> None:
        super().__init__()
        self.height_rel = nn.Parameter(torch.randn(2 * win_size - 1, dim_head) * std)
        self.width_rel = nn.Parameter(torch.randn(2 * win_size - 1, dim_head) * std)


class HaloAttention(nn.Module):
    """Halo attention over (B, C, H, W) maps; H and W must be multiples of `block_size` (ValueError otherwise).

    Heads: `num_heads`; q/k head width `dim_head` (default: make_divisible(dim_out * qk_ratio, 8) // num_heads);
    v head width dim_out // num_heads. Output (B, dim_out, H / stride, W / stride).
    """

    channels_last = False

    def __init__(self, dim: int, dim_out: int | None = None, stride: int = 1, num_heads: int = 8,
                 dim_head: int | None = None, block_size: int = 8, halo_size: int = 3, qk_ratio: float = 1.0,
                 qkv_bias: bool = False, scale_pos_embed: bool = False) -> None:
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"dim_out ({dim_out}) must be a multiple of num_heads ({num_heads})")
        if stride not in (1, 2) or block_size % stride:
            raise ValueError(f"stride must be 1 or 2 and divide block_size ({block_size}); got {stride}")
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, 8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.scale = self.dim_head_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.block_size = block_size
        self.halo_size = halo_size
        self.win_size = block_size + 2 * halo_size
        self.stride = stride
        self.block_size_ds = block_size // stride
        self.q = nn.Conv2d(dim, num_heads * self.dim_head_qk, 1, stride=stride, bias=qkv_bias)
        self.kv = nn.Conv2d(dim, num_heads * (self.dim_head_qk + self.dim_head_v), 1, bias=qkv_bias)
        self.pos_embed = RelPosEmbed(self.win_size, self.dim_head_qk, self.scale)

    def rel_logits(self, q: torch.Tensor) -> torch.Tensor:
        """(..., b*b, win*win) relative logits of queries (..., b*b, d) laid out row-major within a block:
        q . height_rel[ky - qy + win - 1] + q . width_rel[kx - qx + win - 1]."""
        b, win = self.block_size_ds, self.win_size
        q = q.reshape(*q.shape[:-2], b, b, q.shape[-1])
        # table row of (query i, key k): k - i + win - 1, i counted on the query grid (timm's convention,
        # also with strided queries)
        idx = torch.arange(win, device=q.device)[None, :] - torch.arange(b, device=q.device)[:, None] + win - 1
        lh = q @ self.pos_embed.height_rel.transpose(0, 1)  # (..., by, bx, 2win-1)
        lw = q @ self.pos_embed.width_rel.transpose(0, 1)
        shape = (*lh.shape[:-1], win)
        lh = lh.gather(-1, idx[:, None, :].expand(shape))  # row offset depends on the query's row
        lw = lw.gather(-1, idx[None, :, :].expand(shape))  # column offset on its column
        return (lh[..., :, None] + lw[..., None, :]).reshape(*shape[:-3], b * b, win * win)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        bs, bq, win, h = self.block_size, self.block_size_ds, self.win_size, self.halo_size
        if H % bs or W % bs:
            raise ValueError(f"halo attention needs H and W multiples of the block size {bs}; got {H}x{W}")
        nh, nw = H // bs, W // bs
        dq, dv = self.dim_head_qk, self.dim_head_v
        q = self.q(x).reshape(B, self.num_heads, dq, nh, bq, nw, bq)
        q = q.permute(0, 1, 3, 5, 4, 6, 2).reshape(B, self.num_heads, nh * nw, bq * bq, dq)
        kv = F.pad(self.kv(x), [h, h, h, h]).unfold(2, win, bs).unfold(3, win, bs)  # (B, C, nh, nw, win, win)
        kv = kv.reshape(B, self.num_heads, dq + dv, nh * nw, win * win).permute(0, 1, 3, 4, 2)
        k, v = kv.split([dq, dv], dim=-1)
        rel = self.rel_logits(q)
        if self.scale_pos_embed:
            rel = rel * self.scale
        # heads and blocks share one batch axis: 4-D attention (what the ONNX exporter translates)
        q4, k4, v4, rel4 = (t.flatten(1, 2) for t in (q, k, v, rel))
        out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=rel4, scale=self.scale)
        out = out.reshape(B, self.num_heads, nh, nw, bq, bq, dv).permute(0, 1, 6, 2, 4, 3, 5)
        return out.reshape(B, self.num_heads * dv, nh * bq, nw * bq)
