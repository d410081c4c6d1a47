"""Block (window) and grid attention with a 2-D relative position bias: MaxViT's multi-axis attention
(Tu et al., "MaxViT: Multi-Axis Vision Transformer", arXiv 2204.01697).

A channels-last map (B, H, W, C) is cut into partitions of P_h x P_w tokens and every partition attends within
itself:

- **block** ("window") partition: non-overlapping P_h x P_w windows of neighbouring pixels (local attention);
- **grid** partition: a P_h x P_w grid whose cells are (H / P_h) x (W / P_w) apart, each partition gathering one
  pixel per cell (sparse global attention, dilated over the whole map).

Both are plain reshape / permute pairs (`window_partition` / `window_unpartition`, `grid_partition` /
`grid_unpartition`), exact inverses of each other. Attention adds a learned bias per head indexed by the 2-D
offset between key and query, kept as a (heads, 2 P_h - 1, 2 P_w - 1) table as the official TensorFlow code and
timm's `RelPosBiasTf` keep it, and runs through `scaled_dot_product_attention` with that bias as `attn_mask`.

The partition size is either fixed (`partition_size`) or follows the map (`splits`: the map is cut into
`splits x splits` windows, or grid cells `splits` pixels apart, so the partition is (H / splits, W / splits)),
which is how MaxViT's window and grid follow the input size (P = input / 32 at every stage). When the partition
differs from the size the table was built for, the table is resampled as timm resamples it for a new window
(`resize_rel_pos_table`: BEiT's geometric-progression source coordinates, linear interpolation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..helpers import to_2tuple

Size2 = tuple[int, int]


# -- partitions ----------------------------------------------------------------------------------------------------
def window_partition(x: torch.Tensor, size: Size2) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/p_h * W/p_w, p_h * p_w, C): non-overlapping p_h x p_w windows, row-major."""
    B, H, W, C = x.shape
    ph, pw = size
    x = x.reshape(B, H // ph, ph, W // pw, pw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ph * pw, C)


def window_unpartition(windows: torch.Tensor, size: Size2, hw: Size2) -> torch.Tensor:
    """The inverse of `window_partition` for a (H, W) = `hw` map."""
    H, W = hw
    ph, pw = size
    C = windows.shape[-1]
    x = windows.reshape(-1, H // ph, W // pw, ph, pw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def grid_partition(x: torch.Tensor, size: Size2) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/g_h * W/g_w, g_h * g_w, C): partitions of g_h x g_w pixels taken H/g_h and W/g_w
    apart (a dilated grid over the whole map)."""
    B, H, W, C = x.shape
    gh, gw = size
    x = x.reshape(B, gh, H // gh, gw, W // gw, C).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, gh * gw, C)


def grid_unpartition(windows: torch.Tensor, size: Size2, hw: Size2) -> torch.Tensor:
    """The inverse of `grid_partition` for a (H, W) = `hw` map."""
    H, W = hw
    gh, gw = size
    C = windows.shape[-1]
    x = windows.reshape(-1, H // gh, W // gw, gh, gw, C).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, H, W, C)


# -- relative position bias ----------------------------------------------------------------------------------------
def _geometric_coords(src: int, dst: int) -> list[float]:
    """Source sample positions for resampling `src` relative offsets to `dst` (BEiT's fine-tuning recipe, as timm's
    `resize_rel_pos_bias_table`): spacing grows geometrically by q from the centre, q found by bisection so that
    the outermost position reaches dst // 2 (q stays at its 1.01 floor when shrinking)."""
    def progression(r: float, n: int) -> float:
        return (1.0 - r ** n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if progression(q, src // 2) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return [-d for d in reversed(dis)] + [0.0] + dis


def _linear_weights(src: int, dst: int) -> torch.Tensor:
    """(dst, src) matrix of linear-interpolation weights from the geometric source positions to the integer
    target offsets -(dst // 2) .. dst // 2, clamped to the edge values outside the source range."""
    p = torch.tensor(_geometric_coords(src, dst), dtype=torch.float32)
    t = torch.arange(-(dst // 2), dst // 2 + 0.1, 1.0, dtype=torch.float32)
    right = torch.bucketize(t, p).clamp(max=src - 1)
    left = (right - 1).clamp(min=0)
    d_left = (t - p[left]).clamp(min=0)
    d_right = (p[right] - t).clamp(min=0)
    both = (d_left == 0) & (d_right == 0)
    d_left = torch.where(both, 1.0, d_left)
    d_right = torch.where(both, 1.0, d_right)
    total = d_left + d_right
    w = torch.zeros(dst, src)
    rows = torch.arange(dst)
    w.index_put_((rows, left), d_right / total, accumulate=True)
    w.index_put_((rows, right), d_left / total, accumulate=True)
    return w


def resize_rel_pos_table(table: torch.Tensor, size: Size2) -> torch.Tensor:
    """A (heads, 2 h - 1, 2 w - 1) relative position table resampled for a `size` = (h', w') partition,
    (heads, 2 h' - 1, 2 w' - 1), as timm's `resize_rel_pos_bias_table` does for TF MaxViT tables (without scipy:
    linear interpolation between BEiT's geometric source positions). Returns `table` unchanged for its own size."""
    _, sh, sw = table.shape
    dh, dw = 2 * size[0] - 1, 2 * size[1] - 1
    if (sh, sw) == (dh, dw):
        return table
    wy = _linear_weights(sh, dh).to(table)
    wx = _linear_weights(sw, dw).to(table)
    return wy @ table @ wx.T


class RelPosBias2d(nn.Module):
    """Per-head learned bias for every 2-D key - query offset of a partition: table (heads, 2 P_h - 1, 2 P_w - 1),
    initialised N(0, 0.02) (truncated); `forward(size)` gives the (heads, N, N) bias of a `size`
    partition (N = P_h P_w), bias[n, (i, j), (k, l)] = table[n, k - i + P_h - 1, l - j + P_w - 1], the table being
    resampled first when `size` is not the one it was built for."""

    def __init__(self, num_heads: int, window_size: int | Size2) -> None:
        super().__init__()
        self.window_size = to_2tuple(window_size)
        h, w = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_heads, 2 * h - 1, 2 * w - 1))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, size: Size2) -> torch.Tensor:
        h, w = size
        table = self.relative_position_bias_table
        if (h, w) != self.window_size:
            table = resize_rel_pos_table(table, (h, w))
        # The gather written as the official code's two one-hot einsums (matrix products): the official and timm
        # MACs figures count them, and they export to any runtime as plain matmuls.
        lh, lw = _one_hot_offsets(h, table), _one_hot_offsets(w, table)
        bias = torch.einsum("nhw,ixh->nixw", table, lh)
        bias = torch.einsum("nixw,jyw->nijxy", bias, lw)
        return bias.reshape(table.shape[0], h * w, h * w)


def _one_hot_offsets(n: int, like: torch.Tensor) -> torch.Tensor:
    """(n, n, 2n - 1) one-hot lookup: [query, key, v] = 1 where v = key - query + n - 1."""
    i = torch.arange(n, device=like.device)
    v = torch.arange(2 * n - 1, device=like.device)
    return (i[None, :, None] - i[:, None, None] + (n - 1) == v).to(like.dtype)


# -- the mixer -----------------------------------------------------------------------------------------------------
class PartitionAttention(nn.Module):
    """Multi-head self-attention within block (window) or grid partitions of a (B, H, W, C) map, with a 2-D
    relative position bias; the output has the input's shape.

    partition: "block" (local windows) or "grid" (dilated global grid).
    partition_size: a fixed partition (H and W must be multiples of it); or
    splits: the partition follows the map, (H / splits, W / splits) (H and W must be multiples of `splits`).
    window_size: the partition the bias table is built for (default: `partition_size`); others resample it.
    Heads are dim // head_dim; qkv is one Linear whose output is laid out (3, heads, head_dim), as the official
    TF weights (timm's `head_first=False`).
    """

    #: Takes channels-last (B, H, W, C) maps, not (B, N, C) tokens or NCHW maps: it needs the 2-D layout, so it is
    #: not in `MIXERS` (MetaFormer hands its mixers one of those two layouts).
    layout = "NHWC"

    def __init__(self, dim: int, partition: str = "block", head_dim: int = 32,
                 partition_size: int | Size2 | None = None, splits: int | None = None,
                 window_size: int | Size2 | None = None, qkv_bias: bool = True,
                 proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if partition not in ("block", "grid"):
            raise ValueError(f"partition must be 'block' or 'grid'; got {partition!r}")
        if (partition_size is None) == (splits is None):
            raise ValueError("give exactly one of partition_size (fixed) and splits (partition follows the map)")
        if dim % head_dim:
            raise ValueError(f"dim must be a multiple of head_dim={head_dim}; got {dim}")
        self.partition = partition
        self.partition_size = None if partition_size is None else to_2tuple(partition_size)
        self.splits = splits
        window_size = window_size if window_size is not None else partition_size
        if window_size is None:
            raise ValueError("window_size (the bias table's partition) is needed when the partition follows the map")
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rel_pos = RelPosBias2d(self.num_heads, window_size)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def partition_for(self, hw: Size2) -> Size2:
        """The partition size for a (H, W) map; ValueError when the map cannot be partitioned."""
        H, W = hw
        if self.partition_size is not None:
            ph, pw = self.partition_size
            if H % ph or W % pw:
                raise ValueError(f"{self.partition} attention with a {ph}x{pw} partition needs map sides multiples "
                                 f"of {ph}x{pw}; got {H}x{W}")
            return ph, pw
        s = self.splits
        if H % s or W % s:
            raise ValueError(f"{self.partition} attention in {s}x{s} partitions needs map sides multiples of {s}; "
                             f"got {H}x{W}")
        return H // s, W // s

    def attend(self, x: torch.Tensor, size: Size2) -> torch.Tensor:
        """Attention within partitions, (B', N, C) -> (B', N, C), with the bias of a `size` partition."""
        Bp, N, C = x.shape
        q, k, v = self.qkv(x).reshape(Bp, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=self.rel_pos(size).to(q.dtype),
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(Bp, N, C)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = (x.shape[1], x.shape[2])
        size = self.partition_for(hw)
        if self.partition == "block":
            return window_unpartition(self.attend(window_partition(x, size), size), size, hw)
        return grid_unpartition(self.attend(grid_partition(x, size), size), size, hw)
