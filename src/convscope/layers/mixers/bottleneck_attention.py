"""Bottleneck self-attention (Srinivas et al., "Bottleneck Transformers for Visual Recognition", arXiv 2101.11605),
the all-to-all attention of BoTNet's bottleneck blocks, as HaloNet's hybrid halo2botnet uses it.

Global multi-head self-attention over an NCHW map of one fixed size (H, W): q, k and v from one 1x1 conv (`qkv`),
logits q . k * scale plus 2-D relative position logits q . r_h[ky - qy] + q . r_w[kx - qx] (learned tables of
2H - 1 and 2W - 1 rows, `pos_embed.height_rel` / `.width_rel`, timm's names); with stride 2 the output is average
pooled 2x2. Runs through `scaled_dot_product_attention`, the relative logits as its additive mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..helpers import make_divisible
from .halo_attention import RelPosEmbed


class BottleneckAttention(nn.Module):
    """Global self-attention with 2-D relative position logits over (B, C, H, W) maps of size `feat_size` only
    (ValueError otherwise). q/k head width `dim_head` (default make_divisible(dim_out * qk_ratio, 8) // num_heads),
    v head width dim_out // num_heads."""

    def __init__(self, dim: int, feat_size: tuple[int, int], dim_out: int | None = None, stride: int = 1,
                 num_heads: int = 4, dim_head: int | None = None, qk_ratio: float = 1.0,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"dim_out ({dim_out}) must be a multiple of num_heads ({num_heads})")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2; got {stride}")
        self.feat_size = tuple(feat_size)
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, 8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.scale = self.dim_head_qk ** -0.5
        self.qkv = nn.Conv2d(dim, num_heads * (2 * self.dim_head_qk + self.dim_head_v), 1, bias=qkv_bias)
        h, w = self.feat_size
        if h != w:
            raise ValueError(f"feat_size must be square (one table size per axis is kept square here); got {feat_size}")
        self.pos_embed = RelPosEmbed(h, self.dim_head_qk, self.scale)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        if (H, W) != self.feat_size:
            raise ValueError(f"bottleneck attention is built for {self.feat_size[0]}x{self.feat_size[1]} maps; "
                             f"got {H}x{W}")
        nh, dq, dv = self.num_heads, self.dim_head_qk, self.dim_head_v
        q, k, v = self.qkv(x).split([nh * dq, nh * dq, nh * dv], dim=1)
        q = q.reshape(B, nh, dq, H * W).transpose(-1, -2)
        k = k.reshape(B, nh, dq, H * W).transpose(-1, -2)
        v = v.reshape(B, nh, dv, H * W).transpose(-1, -2)
        qm = q.reshape(B, nh, H, W, dq)
        lh = (qm @ self.pos_embed.height_rel.transpose(0, 1))  # (B, nh, H, W, 2H-1)
        lw = (qm @ self.pos_embed.width_rel.transpose(0, 1))
        shape = (B, nh, H, W, H)
        idx = torch.arange(H, device=x.device)[None, :] - torch.arange(H, device=x.device)[:, None] + H - 1
        lh = lh.gather(-1, idx[:, None, :].expand(shape))  # (query, key) -> table row; by the query's row
        lw = lw.gather(-1, idx[None, :, :].expand(shape))  # and by its column
        rel = (lh[..., :, None] + lw[..., None, :]).reshape(B, nh, H * W, H * W)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=rel, scale=self.scale)
        return self.pool(out.transpose(-1, -2).reshape(B, nh * dv, H, W))

    @torch.no_grad()
    def fuse_output_affine_(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold `out -> scale * out + shift` (per output channel) into the value rows of `qkv`, in place: every
        output is a convex combination of values (softmax weights sum to 1, no padded keys) and the 2x2 average
        pool is one too, so an affine map of the values is the same affine map of the output. Exact."""
        nh, dq = self.num_heads, self.dim_head_qk
        w = self.qkv.weight
        b = self.qkv.bias if self.qkv.bias is not None else w.new_zeros(w.shape[0])
        s = torch.ones_like(b)
        t = torch.zeros_like(b)
        s[2 * nh * dq:], t[2 * nh * dq:] = scale, shift  # the values are the last nh * dv channels, head-major
        self.qkv.weight = nn.Parameter(w * s.view(-1, 1, 1, 1), requires_grad=w.requires_grad)
        self.qkv.bias = nn.Parameter(b * s + t, requires_grad=w.requires_grad)
