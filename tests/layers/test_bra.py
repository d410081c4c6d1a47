"""Bi-level routing attention: all regions routed = full attention (+ LePE), top-k routing against a region-by-
region reference, padding, and option checks."""
from __future__ import annotations

import pytest
import torch

from convscope.analysis import count
from convscope.layers.mixers.bra import BiLevelRoutingAttention, LePEAttention


def _full_attention(bra: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Global attention with BRA's projections and scale (qk_dim ** -0.5), LePE on v, output projection."""
    B, H, W, C = x.shape
    q, k, v = bra.qkv(x).reshape(B, H * W, -1).split([bra.qk_dim, bra.qk_dim, bra.dim], -1)
    m = bra.num_heads
    heads = lambda t: t.reshape(B, H * W, m, -1).transpose(1, 2)  # noqa: E731
    attn = ((heads(q) * bra.scale) @ heads(k).transpose(-2, -1)).softmax(-1)
    out = (attn @ heads(v)).transpose(1, 2).reshape(B, H, W, C)
    if bra.side_dwconv:
        out = out + bra.lepe(v.reshape(B, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return bra.wo(out)


@pytest.mark.parametrize("side_dwconv", [0, 3])
def test_routing_to_all_regions_is_full_attention(side_dwconv):
    torch.manual_seed(0)
    bra = BiLevelRoutingAttention(16, num_heads=2, n_win=2, qk_dim=8, topk=4, side_dwconv=side_dwconv).double()
    x = torch.randn(2, 4, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(bra(x), _full_attention(bra, x), rtol=1e-10, atol=1e-10)


def _routed_reference(bra: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Region by region: mean q/k per region, top-k regions by (q_r * scale) . k_r, attention over their tokens."""
    B, H, W, C = x.shape
    n, m = bra.n_win, bra.num_heads
    h, w = H // n, W // n
    q, k, v = bra.qkv(x).split([bra.qk_dim, bra.qk_dim, bra.dim], -1)
    regions = [(i, j) for i in range(n) for j in range(n)]

    def tok(t, r):  # (b, H, W, c) -> the (b, h*w, c) tokens of region r
        return t[:, r[0] * h:(r[0] + 1) * h, r[1] * w:(r[1] + 1) * w].reshape(len(t), h * w, -1)

    qm = torch.stack([tok(q, r).mean(1) for r in regions], 1)
    km = torch.stack([tok(k, r).mean(1) for r in regions], 1)
    top = ((qm * bra.scale) @ km.transpose(1, 2)).topk(bra.topk, -1).indices  # (B, P, topk)
    out = torch.zeros(B, H, W, C, dtype=x.dtype)
    for b in range(B):
        for p, r in enumerate(regions):
            qq = tok(q[b:b + 1], r)[0].reshape(h * w, m, -1).transpose(0, 1)
            sel = top[b, p].tolist()
            kk = torch.cat([tok(k[b:b + 1], regions[s])[0] for s in sel]).reshape(-1, m, bra.qk_dim // m)
            vv = torch.cat([tok(v[b:b + 1], regions[s])[0] for s in sel]).reshape(-1, m, C // m)
            a = ((qq * bra.scale) @ kk.permute(1, 2, 0)).softmax(-1)
            o = (a @ vv.transpose(0, 1)).transpose(0, 1).reshape(h, w, C)
            out[b, r[0] * h:(r[0] + 1) * h, r[1] * w:(r[1] + 1) * w] = o
    return bra.wo(out)


def test_topk_routing_matches_region_reference():
    torch.manual_seed(1)
    bra = BiLevelRoutingAttention(16, num_heads=2, n_win=3, qk_dim=16, topk=2, side_dwconv=0).double()
    x = torch.randn(2, 6, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(bra(x), _routed_reference(bra, x), rtol=1e-10, atol=1e-10)


def test_auto_pad_and_its_absence():
    torch.manual_seed(0)
    bra = BiLevelRoutingAttention(16, num_heads=2, n_win=3, topk=2)
    x = torch.randn(1, 5, 7, 16)
    assert bra(x).shape == x.shape
    padded = torch.nn.functional.pad(x, (0, 0, 0, 2, 0, 1))
    torch.testing.assert_close(bra(x), bra(padded)[:, :5, :7])
    bra.auto_pad = False
    with pytest.raises(ValueError, match="multiples of n_win=3"):
        bra(x)


def test_options_as_in_the_official_code():
    with pytest.raises(ValueError, match="diff_routing"):
        BiLevelRoutingAttention(16, 2, param_routing=True)
    with pytest.raises(NotImplementedError, match="hard differentiable"):
        BiLevelRoutingAttention(16, 2, diff_routing=True)
    soft = BiLevelRoutingAttention(16, 2, n_win=2, topk=2, param_routing=True, diff_routing=True, soft_routing=True)
    x = torch.randn(1, 4, 4, 16, requires_grad=True)
    soft(x).sum().backward()
    assert soft.router_emb.weight.grad is not None and soft.router_emb.weight.grad.abs().sum() > 0
    with pytest.raises(TypeError, match="kernel_sise"):
        BiLevelRoutingAttention(16, kernel_sise=3)


def test_counted_without_uncounted_ops():
    for m, x in ((BiLevelRoutingAttention(32, 2, n_win=2, topk=2), torch.randn(1, 4, 6, 32)),
                 (LePEAttention(32), torch.randn(1, 3, 3, 32))):
        assert count(m, inputs=x).uncounted == {}
