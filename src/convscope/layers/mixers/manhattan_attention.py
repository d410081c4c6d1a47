"""Manhattan self-attention, MaSA (RMT, Fan et al., "RMT: Retentive Networks Meet Vision Transformers",
CVPR 2024, arXiv 2309.11523).

Self-attention with an explicit spatial prior: the softmax weight of key (k, l) for the query at (i, j) is
multiplied by gamma_h^(|i-k| + |j-l|) (a per-head decay gamma_h = 1 - 2^(-a - r*h/n), a the initial value, r the
heads range, h = 0..n-1), i.e. `log(gamma_h) * manhattan_distance` is added to the logits as a mask.
Queries and keys are rotated RetNet-style (`theta_shift`: pairs of channels turned by angle_d * p, p the
row-major flat position), and a 5x5 depthwise conv of the values (LePE) is added to the output.

Decomposed form (the official "chunkwise" stages): attention along W within every row (1-D mask
log(gamma)*|j-l|), then along H within every column (log(gamma)*|i-k|) on the row pass's output. The composed
weight of (k, l) for (i, j) is A_H[j](i, k) * A_W[k](j, l), which is the 2-D Manhattan-masked weight whenever the
logits factor that way; with no content term (q.k = 0) both give exactly gamma^(|i-k|+|j-l|) / Z (see
tests/layers/test_manhattan_attention.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) over the last dimension."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def theta_shift(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """The rotary position shift: x * cos + rotate_pairs(x) * sin."""
    return x * cos + rotate_pairs(x) * sin


class ManhattanRelPos(nn.Module):
    """The per-stage position terms of MaSA: rotary sin/cos and the Manhattan decay mask(s).

    Buffers (kept in checkpoints, as the official code keeps them): `angle` (key_dim,), the rotary frequencies
    1 / 10000^linspace(0, 1, key_dim/2) each repeated twice, and `decay` (num_heads,), log(gamma_h).
    `forward(h, w)` gives (sin, cos) of shape (h, w, key_dim) and either the 2-D mask (heads, hw, hw) or the
    1-D masks (heads, h, h) and (heads, w, w) when `decomposed`.
    """

    def __init__(self, dim: int, num_heads: int, initial_value: float = 2.0, heads_range: float = 4.0,
                 decomposed: bool = False) -> None:
        super().__init__()
        key_dim = dim // num_heads
        if dim % num_heads or key_dim % 2:
            raise ValueError(f"MaSA needs dim divisible by num_heads with an even head width; got dim={dim}, "
                             f"num_heads={num_heads}")
        self.decomposed = decomposed
        angle = 1.0 / 10000 ** torch.linspace(0, 1, key_dim // 2)
        self.register_buffer("angle", angle.repeat_interleave(2))
        heads = torch.arange(num_heads, dtype=torch.float32)
        self.register_buffer("decay", torch.log(1 - 2 ** (-initial_value - heads_range * heads / num_heads)))

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, ...]:
        pos = torch.arange(h * w, device=self.angle.device, dtype=self.angle.dtype)
        phase = (pos[:, None] * self.angle[None, :]).reshape(h, w, -1)
        sin, cos = torch.sin(phase), torch.cos(phase)
        if self.decomposed:
            return sin, cos, self.mask_1d(h), self.mask_1d(w)
        return sin, cos, self.mask_2d(h, w)

    def mask_1d(self, n: int) -> torch.Tensor:
        """log(gamma) * |i - k| per head: (heads, n, n)."""
        idx = torch.arange(n, device=self.decay.device, dtype=self.decay.dtype)
        return (idx[:, None] - idx[None, :]).abs() * self.decay[:, None, None]

    def mask_2d(self, h: int, w: int) -> torch.Tensor:
        """log(gamma) * (|i - k| + |j - l|) per head over row-major positions: (heads, hw, hw)."""
        ih = torch.arange(h, device=self.decay.device, dtype=self.decay.dtype)
        iw = torch.arange(w, device=self.decay.device, dtype=self.decay.dtype)
        dh = (ih[:, None] - ih[None, :]).abs()   # (h, h)
        dw = (iw[:, None] - iw[None, :]).abs()   # (w, w)
        dist = (dh[:, None, :, None] + dw[None, :, None, :]).reshape(h * w, h * w)
        return dist * self.decay[:, None, None]


class ManhattanSelfAttention(nn.Module):
    """MaSA on channels-last maps (B, H, W, C), given the stage's `ManhattanRelPos` output.

    q, k, v: Linear(C, C) with bias; logits scaled by key_dim^-0.5; LePE: 5x5 depthwise conv (with bias) of v
    added to the attention output; out_proj: Linear(C, C). `decomposed` selects the H/W-decomposed form (it
    must match the ManhattanRelPos that feeds it). All attention goes through scaled_dot_product_attention with
    the decay as an additive float mask.
    """

    channels_last = True

    def __init__(self, dim: int, num_heads: int, decomposed: bool = False, lepe_kernel: int = 5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.decomposed = decomposed
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim)
        self.out_proj = nn.Linear(dim, dim)
        self.qkv: nn.Linear | None = None  # the deploy form's merged projection

    @torch.no_grad()
    def merge_qkv_(self) -> None:
        """Deploy form: the three projections of the same input become one Linear(C, 3C) (q, k, v in order);
        RMT's stage calls it from its `reparameterize()` (this module's forward needs the stage's terms)."""
        if self.qkv is not None:
            return
        projs = (self.q_proj, self.k_proj, self.v_proj)
        w = torch.cat([p.weight for p in projs])
        self.qkv = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
        self.qkv.weight.copy_(w)
        self.qkv.bias.copy_(torch.cat([p.bias for p in projs]))
        del self.q_proj, self.k_proj, self.v_proj

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv is not None:
            return self.qkv(x).chunk(3, dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x: torch.Tensor, rel_pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
        B, H, W, C = x.shape
        n, d = self.num_heads, self.key_dim
        sin, cos = rel_pos[0], rel_pos[1]
        q, k, v = self._project(x)
        lepe = self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        q = theta_shift(q.reshape(B, H, W, n, d).permute(0, 3, 1, 2, 4), sin, cos)  # (B, n, H, W, d)
        k = theta_shift(k.reshape(B, H, W, n, d).permute(0, 3, 1, 2, 4), sin, cos)
        v = v.reshape(B, H, W, n, d).permute(0, 3, 1, 2, 4)
        if self.decomposed:
            mask_h, mask_w = rel_pos[2], rel_pos[3]
            # (rows / columns join the batch axis: 4-D attention, what the ONNX exporter translates)
            # along W within each row: (B, H, n, W, d)
            out = F.scaled_dot_product_attention(q.transpose(1, 2).flatten(0, 1), k.transpose(1, 2).flatten(0, 1),
                                                 v.transpose(1, 2).flatten(0, 1), attn_mask=mask_w).unflatten(0, (B, H))
            # along H within each column: (B, W, n, H, d)
            out = F.scaled_dot_product_attention(q.permute(0, 3, 1, 2, 4).flatten(0, 1),
                                                 k.permute(0, 3, 1, 2, 4).flatten(0, 1),
                                                 out.permute(0, 3, 2, 1, 4).flatten(0, 1), attn_mask=mask_h)
            out = out.unflatten(0, (B, W)).permute(0, 3, 1, 2, 4).reshape(B, H, W, C)
        else:
            out = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3),
                                                 attn_mask=rel_pos[2])  # (B, n, HW, d)
            out = out.transpose(1, 2).reshape(B, H, W, C)
        return self.out_proj(out + lepe)
