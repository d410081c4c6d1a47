"""TransNeXt's attention: the unfold sliding window against a direct padded gather, the border tables by hand,
the continuous position bias tables, and the full form against its formula."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from convscope.layers.mixers.aggregated_attention import AggregatedAttention, relative_position_cpb
from convscope.layers.mixers.length_scaled_attention import LengthScaledAttention

from ..conftest import randomize_


def test_border_mask_and_length_scale_on_a_3x3_map():
    attn = AggregatedAttention(8, 2, (3, 3), sr_ratio=3)
    assert attn.pool_len == 1
    seen = torch.tensor([4, 6, 4, 6, 9, 6, 4, 6, 4], dtype=torch.float32)  # corners, edges, centre
    assert torch.equal((~attn.padding_mask).sum(-1).float(), seen)
    torch.testing.assert_close(attn.seq_length_scale[:, 0], torch.log(seen + 1))
    # the corner (0, 0) sees the window slots (dy, dx) in {0, 1}^2 only: slots 4, 5, 7, 8 of the 3x3 window
    assert (~attn.padding_mask[0]).nonzero().flatten().tolist() == [4, 5, 7, 8]
    torch.testing.assert_close(F.softplus(attn.temperature).flatten(), torch.full((2,), 1 / 0.24))


def test_position_tables_reproduce_the_log_spaced_offsets():
    index, table = relative_position_cpb((4, 6), (2, 3), pretrain_size=(8, 8))
    qh, qw = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    kh, kw = torch.meshgrid(torch.tensor([0.5, 2.5]), torch.tensor([0.5, 2.5, 4.5]), indexing="ij")  # pooled
    dh = (qh.reshape(-1, 1) - kh.reshape(1, -1)) / 7 * 8
    dw = (qw.reshape(-1, 1) - kw.reshape(1, -1)) / 7 * 8
    want = torch.stack([dh, dw], -1).view(-1, 2)
    want = torch.sign(want) * torch.log2(want.abs() + 1) / 3
    torch.testing.assert_close(table[index], want)
    assert len(table) == len(torch.unique(want, dim=0))


def test_position_tables_equal_the_unique_over_all_offset_pairs():
    # the tables are built per axis; they equal (bit for bit, same order) the unique rows over every query-key pair
    for q, k, p in (((7, 9), (2, 3), (7, 9)), ((14, 10), (14, 10), (7, 7)), ((12, 12), (3, 3), (16, 16))):
        qh, qw = (t.reshape(-1, 1) for t in torch.meshgrid(torch.arange(q[0] + 0.0), torch.arange(q[1] + 0.0),
                                                            indexing="ij"))
        pooled = [F.adaptive_avg_pool1d(torch.arange(n + 0.0)[None], m)[0] for n, m in zip(q, k, strict=True)]
        kh, kw = (t.reshape(1, -1) for t in torch.meshgrid(*pooled, indexing="ij"))
        rel = torch.stack([(qh - kh) / (p[0] - 1) * 8, (qw - kw) / (p[1] - 1) * 8], -1).view(-1, 2)
        want_table, want_index = torch.unique(rel, return_inverse=True, dim=0)
        index, table = relative_position_cpb(q, k, p)
        assert torch.equal(index, want_index)
        assert torch.equal(table, torch.sign(want_table) * torch.log2(want_table.abs() + 1.0) / math.log2(8))


def _reference(attn: AggregatedAttention, x, H, W, index, table):
    """The aggregated attention written out: every query's 3x3 neighbours gathered from a zero-padded map."""
    B, N, C = x.shape
    n, d, P = attn.num_heads, attn.head_dim, attn.pool_len
    r = attn.window_size // 2
    q_norm = F.normalize(attn.q(x).view(B, N, n, d).transpose(1, 2), dim=-1)
    q_s = (q_norm + attn.query_embedding) * F.softplus(attn.temperature) * attn.seq_length_scale
    k, v = attn.kv(x).chunk(2, -1)
    k = F.normalize(k.view(B, H, W, n, d), dim=-1)
    v = v.view(B, H, W, n, d)
    kp, vp = (F.pad(t, (0, 0, 0, 0, r, r, r, r)) for t in (k, v))  # zero-pad H and W
    ks, vs, inside = [], [], []
    for dy in range(-r, r + 1):  # window slots in row-major order
        for dx in range(-r, r + 1):
            ks.append(kp[:, r + dy:r + dy + H, r + dx:r + dx + W].reshape(B, N, n, d))
            vs.append(vp[:, r + dy:r + dy + H, r + dx:r + dx + W].reshape(B, N, n, d))
            iy, ix = torch.meshgrid(torch.arange(H) + dy, torch.arange(W) + dx, indexing="ij")
            inside.append(((iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)).reshape(N))
    k_loc = torch.stack(ks, -1).permute(0, 2, 1, 4, 3)  # (B, n, N, L, d)
    v_loc = torch.stack(vs, -1).permute(0, 2, 1, 4, 3)
    logit_loc = torch.einsum("bhnd,bhnld->bhnl", q_s, k_loc) + attn.relative_pos_bias_local[:, None]
    logit_loc = logit_loc.masked_fill(~torch.stack(inside, -1), float("-inf"))
    pooled = F.adaptive_avg_pool2d(attn.act(attn.sr(x.transpose(1, 2).reshape(B, C, H, W))), attn.pool_size)
    kv_pool = attn.kv(attn.norm(pooled.flatten(2).transpose(1, 2))).view(B, P, 2, n, d)
    k_pool, v_pool = F.normalize(kv_pool[:, :, 0], dim=-1).transpose(1, 2), kv_pool[:, :, 1].transpose(1, 2)
    bias = attn.cpb_fc2(torch.relu(attn.cpb_fc1(table)))[index].view(N, P, n).permute(2, 0, 1)
    logit_pool = q_s @ k_pool.transpose(-1, -2) + bias
    w = torch.softmax(torch.cat([logit_loc, logit_pool], -1), -1)
    w_loc = w[..., :attn.local_len] + q_norm @ attn.learnable_tokens + attn.learnable_bias
    out = torch.einsum("bhnl,bhnld->bhnd", w_loc, v_loc) + w[..., attn.local_len:] @ v_pool
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


def test_unfold_window_equals_a_direct_padded_gather():
    H, W, C = 6, 8, 16
    attn = randomize_(AggregatedAttention(C, 2, (H, W), sr_ratio=2), seed=4).eval()
    attn.padding_mask = AggregatedAttention(C, 2, (H, W), sr_ratio=2).padding_mask  # randomize_ skips bools
    attn.seq_length_scale = AggregatedAttention(C, 2, (H, W), sr_ratio=2).seq_length_scale
    index, table = relative_position_cpb((H, W), attn.pool_size, (H, W))
    x = torch.randn(2, H * W, C)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, H, W, index, table), _reference(attn, x, H, W, index, table),
                                   rtol=1e-5, atol=1e-5)


def test_length_scaled_attention_formula():
    H, W, C, n = 3, 4, 16, 4
    attn = randomize_(LengthScaledAttention(C, n, (H, W)), seed=5).eval()
    index, table = relative_position_cpb((H, W), (H, W))
    x = torch.randn(2, H * W, C)
    with torch.no_grad():
        q, k, v = attn.qkv(x).view(2, H * W, 3, n, C // n).permute(2, 0, 3, 1, 4)
        bias = attn.cpb_fc2(torch.relu(attn.cpb_fc1(table)))[index].view(H * W, H * W, n).permute(2, 0, 1)
        q = (F.normalize(q, dim=-1) + attn.query_embedding) * F.softplus(attn.temperature) * math.log(H * W)
        w = torch.softmax(q @ F.normalize(k, dim=-1).transpose(-1, -2) + bias, -1)
        want = attn.proj((w @ v).transpose(1, 2).reshape(2, H * W, C))
        torch.testing.assert_close(attn(x, H, W, index, table), want, rtol=1e-5, atol=1e-5)
