"""Convolutional-projection attention (Wu et al., "CvT: Introducing Convolutions to Vision Transformers",
arXiv 2103.15808, Sec. 3.2).

Multi-head self-attention whose queries, keys and values are each taken from the token map through a depthwise
k x k conv (no bias) and a BatchNorm ("dw_bn"), then a Linear layer. Keys and values use a strided conv
(stride 2 in CvT), which shortens the key/value sequence four-fold. Prefix tokens (CvT's class token in its last
stage) skip the convolutions and join the three sequences in front. The logits are scaled by dim**-0.5 (the
whole width, not the head width), as the official code does.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..reparam import fold_sequential_


def conv_projection(dim: int, kernel_size: int, stride: int) -> nn.Sequential:
    """CvT's "dw_bn" projection: depthwise k x k conv (padding k // 2, no bias) -> BatchNorm."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim, bias=False),
        bn=nn.BatchNorm2d(dim)))


class ConvProjectionAttention(nn.Module):
    """Attention over (B, P + H*W, C) tokens: P prefix tokens, then an H x W map in row-major order.

    q = Linear(P ++ flat(BN(dwconv_q(map)))), k and v likewise with stride `stride_kv`; output (B, P + H*W, C).
    `forward(x, hw)` needs the map's (H, W). Not in `MIXERS`: a MetaFormer mixer takes only the tensor.
    """

    channels_last = True

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, kernel_size: int = 3, stride_q: int = 1,
                 stride_kv: int = 2, num_prefix_tokens: int = 0, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = dim ** -0.5  # the official code scales by the full width
        self.num_prefix_tokens = num_prefix_tokens
        self.attn_drop = attn_drop
        self.conv_proj_q = conv_projection(dim, kernel_size, stride_q)
        self.conv_proj_k: nn.Module | None = conv_projection(dim, kernel_size, stride_kv)
        self.conv_proj_v: nn.Module | None = conv_projection(dim, kernel_size, stride_kv)
        self.conv_proj_kv: nn.Conv2d | None = None  # the deploy form's merged k / v projection
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        H, W = hw
        prefix, tokens = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        fmap = tokens.transpose(1, 2).reshape(B, C, H, W)
        if self.conv_proj_kv is None:
            maps = (self.conv_proj_q(fmap), self.conv_proj_k(fmap), self.conv_proj_v(fmap))
        else:  # channels (2c, 2c + 1) of the merged conv are channel c of k and of v
            kv = self.conv_proj_kv(fmap)
            kv = kv.reshape(B, C, 2, *kv.shape[-2:])
            maps = (self.conv_proj_q(fmap), kv[:, :, 0], kv[:, :, 1])
        q, k, v = (torch.cat([prefix, m.flatten(2).transpose(1, 2)], dim=1) for m in maps)
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                           scale=self.scale)
        x = x.transpose(1, 2).reshape(B, -1, C)
        return self.proj_drop(self.proj(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold each projection's BatchNorm into its depthwise conv, and merge the k and v projections (same input,
        kernel and stride) into one depthwise conv with two outputs per channel (groups = dim, 2 dim outputs:
        channel 2c is k's channel c, 2c + 1 is v's). Exact; idempotent."""
        fold_sequential_(self.conv_proj_q)
        if self.conv_proj_kv is not None:
            return
        for seq in (self.conv_proj_k, self.conv_proj_v):
            fold_sequential_(seq)
        ck, cv = self.conv_proj_k.conv, self.conv_proj_v.conv
        merged = nn.Conv2d(ck.in_channels, 2 * ck.out_channels, ck.kernel_size, stride=ck.stride,
                           padding=ck.padding, groups=ck.groups, bias=True, device=ck.weight.device,
                           dtype=ck.weight.dtype)
        zeros = ck.weight.new_zeros(ck.out_channels)
        merged.weight.copy_(torch.stack([ck.weight, cv.weight], dim=1).flatten(0, 1))
        merged.bias.copy_(torch.stack([ck.bias if ck.bias is not None else zeros,
                                       cv.bias if cv.bias is not None else zeros], dim=1).flatten())
        self.conv_proj_kv = merged
        self.conv_proj_k = self.conv_proj_v = None
