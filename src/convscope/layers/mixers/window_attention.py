"""Multi-head window self-attention with a 2-D relative position bias, as in MOAT (Yang et al., arXiv 2210.01820)
and CoAtNet (Dai et al., arXiv 2106.04803), on NCHW maps.

The map is cut into non-overlapping `window_size` windows (the whole map when `window_size` is None: global
attention, which is what MOAT uses for ImageNet classification); in each window every position attends to every
other with logits

    q_i . k_j / sqrt(head_dim) + B[h, r_j - r_i + Wh - 1, c_j - c_i + Ww - 1]

where (r, c) are row and column inside the window and B is a learnt (heads, 2P-1, 2P-1) table for a P x P
window (`pos_embed_size`). A window of another size reads the table bilinearly resized (half-pixel centres, no
antialiasing: TensorFlow's `tf.image.resize`, as the official MOAT code) to (2Wh-1, 2Ww-1), so the parameter count
does not depend on the input size. q, k, v and the output projection carry biases. Runs through
`scaled_dot_product_attention` with the bias as `attn_mask`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..helpers import to_2tuple


def relative_position_bias(table: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(heads, 2P-1, 2P-1) table -> (heads, height*width, height*width) bias, query positions along dim 1.

    bias[h, (r, c), (r', c')] = T[h, r' - r + height - 1, c' - c + width - 1] where T is the table resized to
    (2 height - 1, 2 width - 1) (unchanged when it already has that size)."""
    size = (2 * height - 1, 2 * width - 1)
    if tuple(table.shape[-2:]) != size:
        table = F.interpolate(table.unsqueeze(0), size=size, mode="bilinear", align_corners=False).squeeze(0)
    rows = torch.arange(height, device=table.device)
    cols = torch.arange(width, device=table.device)
    dr = (rows[None, :] - rows[:, None] + height - 1)  # (query row, key row)
    dc = (cols[None, :] - cols[:, None] + width - 1)
    idx_r = dr[:, None, :, None].expand(height, width, height, width).reshape(height * width, height * width)
    idx_c = dc[None, :, None, :].expand(height, width, height, width).reshape(height * width, height * width)
    return table[:, idx_r, idx_c]


class RelPosWindowAttention(nn.Module):
    """Window (or global) multi-head self-attention with an interpolated 2-D relative position bias; NCHW in and
    out. `dim // head_dim` heads. `window_size=None`: one window covering the whole map, whatever its size;
    otherwise the map's sides must be multiples of the window's (ValueError naming them)."""

    channels_last = False
    # whole heads for structured pruning (convscope.deploy.prune): qkv, proj, per-head parameters
    prune_heads = ("qkv", "proj", ("rel_pos",))

    def __init__(self, dim: int, head_dim: int = 32, window_size: int | tuple[int, int] | None = None,
                 pos_embed_size: int | None = 7, qkv_bias: bool = True, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim must be a multiple of head_dim={head_dim}; got {dim}")
        self.dim = dim
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.window_size = None if window_size is None else to_2tuple(window_size)
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        if pos_embed_size is not None:
            self.rel_pos = nn.Parameter(torch.zeros(self.num_heads, 2 * pos_embed_size - 1, 2 * pos_embed_size - 1))
            nn.init.normal_(self.rel_pos, std=0.02)
        else:
            self.register_parameter("rel_pos", None)

    def windows_for(self, height: int, width: int) -> tuple[int, int]:
        """The window (rows, cols) used on a height x width map; ValueError when the map cannot be tiled."""
        if self.window_size is None:
            return height, width
        wh, ww = self.window_size
        if height % wh or width % ww:
            raise ValueError(f"window attention needs feature maps whose sides are multiples of the window "
                             f"{wh}x{ww}; got {height}x{width}")
        return wh, ww

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        wh, ww = self.windows_for(H, W)
        nh, nw = H // wh, W // ww
        t = x.reshape(B, C, nh, wh, nw, ww).permute(0, 2, 4, 3, 5, 1).reshape(B * nh * nw, wh * ww, C)
        q, k, v = self.qkv(t).reshape(-1, wh * ww, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None
        if self.rel_pos is not None:
            mask = relative_position_bias(self.rel_pos, wh, ww).to(q.dtype).unsqueeze(0)
        t = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        # heads side by side, as transpose(1, 2).reshape would give; a concatenation, because the reshape of the
        # transposed attention output is traced as a view that the ONNX exporter's fake tensors cannot take
        t = self.proj_drop(self.proj(torch.cat(t.unbind(1), dim=-1)))
        return t.reshape(B, nh, nw, wh, ww, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
