"""Bi-level routing attention (Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention",
CVPR 2023, arXiv 2303.08125).

The map is cut into an n_win x n_win grid of regions. Region level: each region's query and key are the means of
its tokens' queries and keys; every region keeps the `topk` regions whose mean keys score highest against its mean
query. Token level: each token attends to all tokens of its region's `topk` regions (keys and values gathered with
`torch.gather`). A depthwise conv on the values (LePE, "side_dwconv") is added before the output projection.

This follows the official `ops/bra_legacy.py` (the layout the released checkpoints use), quirks included:
- one scale, `qk_dim ** -0.5` with qk_dim the full query/key width (not the per-head width), for both the routing
  logits and the token attention;
- routing uses detached region queries/keys unless `diff_routing`; `param_routing` adds a Linear before routing
  (the official code requires diff_routing with it); `soft_routing` multiplies the gathered keys and values by the
  softmax of the top-k routing logits; diff_routing without soft_routing ("hard" differentiable routing) is not
  implemented officially and raises here too;
- `auto_pad`: zero-pad the (normalised) input at the bottom/right to a multiple of n_win and crop the output
  (the official classification models assert divisibility instead; equal wherever no padding is needed).
Key/value downsampling other than 'identity' (all released models) is not provided.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention on a channels-last (B, H, W, C) map; returns the same shape.

    dim: channels (values, output); qk_dim: query/key width (default dim); num_heads: heads (dividing both);
    n_win: regions per side; topk: regions each region attends to; side_dwconv: LePE kernel (0: none).
    """

    channels_last = True

    def __init__(self, dim: int, num_heads: int = 8, n_win: int = 7, qk_dim: int | None = None,
                 qk_scale: float | None = None, topk: int = 4, side_dwconv: int = 3, param_routing: bool = False,
                 diff_routing: bool = False, soft_routing: bool = False, auto_pad: bool = True) -> None:
        super().__init__()
        self.dim, self.qk_dim = dim, qk_dim or dim
        if self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"qk_dim ({self.qk_dim}) and dim ({dim}) must be divisible by num_heads ({num_heads})")
        if param_routing and not diff_routing:
            raise ValueError("param_routing needs diff_routing (as in the official code)")
        if diff_routing and not soft_routing:
            raise NotImplementedError("hard differentiable routing (diff_routing without soft_routing) is not "
                                      "implemented, here as in the official code")
        if topk < 1 or topk > n_win * n_win:
            raise ValueError(f"topk must be in 1..n_win**2 = {n_win * n_win}; got {topk}")
        self.num_heads, self.n_win, self.topk = num_heads, n_win, topk
        self.scale = qk_scale or self.qk_dim ** -0.5
        self.diff_routing, self.soft_routing, self.auto_pad = diff_routing, soft_routing, auto_pad
        self.qkv = nn.Linear(dim, 2 * self.qk_dim + dim)
        self.router_emb: nn.Module = nn.Linear(self.qk_dim, self.qk_dim) if param_routing else nn.Identity()
        self.lepe: nn.Module = (nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
                                if side_dwconv > 0 else nn.Identity())
        self.side_dwconv = side_dwconv
        self.wo = nn.Linear(dim, dim)

    def _regions(self, t: torch.Tensor) -> torch.Tensor:
        """(B, H, W, c) -> (B, n*n, h*w, c), regions in row-major order."""
        B, H, W, c = t.shape
        n = self.n_win
        return t.view(B, n, H // n, n, W // n, c).permute(0, 1, 3, 2, 4, 5).reshape(B, n * n, -1, c)

    def route(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Region-level routing on region-mean (B, P, qk_dim) queries and keys: (weights, indices), each
        (B, P, topk); weights are the softmax of the top-k logits."""
        if not self.diff_routing:
            q, k = q.detach(), k.detach()
        q, k = self.router_emb(q), self.router_emb(k)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        top, idx = torch.topk(logits, self.topk, dim=-1)
        return top.softmax(-1), idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H_in, W_in, _ = x.shape
        n = self.n_win
        if H_in % n or W_in % n:
            if not self.auto_pad:
                raise ValueError(f"bi-level routing attention needs H and W multiples of n_win={n} (or "
                                 f"auto_pad=True); got {H_in}x{W_in}")
            x = F.pad(x, (0, 0, 0, (n - W_in % n) % n, 0, (n - H_in % n) % n))
        B, H, W, _ = x.shape
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        lepe = self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) if self.side_dwconv > 0 else 0
        qr, kr, vr = self._regions(q), self._regions(k), self._regions(v)  # (B, P, hw, c)
        P, hw = qr.shape[1:3]
        weight, idx = self.route(qr.mean(2), kr.mean(2))

        def gather(t: torch.Tensor) -> torch.Tensor:  # (B, P, hw, c) -> (B, P, topk, hw, c) of the routed regions
            c = t.shape[-1]
            src = t.unsqueeze(1).expand(B, P, P, hw, c)
            return torch.gather(src, 2, idx.view(B, P, self.topk, 1, 1).expand(B, P, self.topk, hw, c))

        ks, vs = gather(kr), gather(vr)
        if self.soft_routing:
            w = weight.view(B, P, self.topk, 1, 1)
            ks, vs = ks * w, vs * w
        m = self.num_heads
        q = qr.reshape(B * P, hw, m, -1).transpose(1, 2)                                  # (BP, m, hw, c)
        ks = ks.reshape(B * P, self.topk * hw, m, -1).transpose(1, 2)                     # (BP, m, k*hw, c)
        vs = vs.reshape(B * P, self.topk * hw, m, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, ks, vs, scale=self.scale)                 # (BP, m, hw, c)
        out = out.transpose(1, 2).reshape(B, n, n, H // n, W // n, self.dim)
        out = out.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, self.dim) + lepe
        out = self.wo(out)
        if H != H_in or W != W_in:
            out = out[:, :H_in, :W_in].contiguous()
        return out


class LePEAttention(nn.Module):
    """Global multi-head attention on a (B, H, W, C) map plus a depthwise conv (LePE) of the attention's *input*,
    added before the output projection: BiFormer's last stage (the official `AttentionLePE`, which is built with
    its default 8 heads and no qkv bias whatever the stage's head_dim)."""

    channels_last = True

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, side_dwconv: int = 5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.side_dwconv = side_dwconv
        self.lepe: nn.Module = (nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
                                if side_dwconv > 0 else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        lepe = self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) if self.side_dwconv > 0 else 0
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H, W, C)
        return self.proj(out + lepe)
