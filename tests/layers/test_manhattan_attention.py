"""Manhattan self-attention (RMT): the decay masks by hand, and the decomposed form against 2-D attention."""
from __future__ import annotations

import math

import pytest
import torch

from convscope.layers.mixers.manhattan_attention import (
    ManhattanRelPos,
    ManhattanSelfAttention,
    rotate_pairs,
    theta_shift,
)


def test_decay_values_follow_the_official_formula():
    rp = ManhattanRelPos(64, 4, initial_value=2, heads_range=4)
    gamma = rp.decay.exp()
    torch.testing.assert_close(gamma, torch.tensor([0.75, 0.875, 0.9375, 0.96875]))


def test_2d_mask_by_hand_on_a_2x2_map():
    rp = ManhattanRelPos(16, 2, initial_value=2, heads_range=2)
    # row-major positions (0,0), (0,1), (1,0), (1,1): Manhattan distances
    dist = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1], [1, 2, 0, 1], [2, 1, 1, 0]], dtype=torch.float32)
    sin, cos, mask = rp(2, 2)
    assert mask.shape == (2, 4, 4)
    for h, gamma in enumerate((1 - 2 ** -2, 1 - 2 ** -3)):
        torch.testing.assert_close(mask[h].exp(), gamma ** dist)
        torch.testing.assert_close(mask[h], math.log(gamma) * dist)


def test_1d_masks_and_rotary_terms():
    rp = ManhattanRelPos(16, 2, decomposed=True)
    sin, cos, mask_h, mask_w = rp(2, 3)
    assert mask_h.shape == (2, 2, 2) and mask_w.shape == (2, 3, 3)
    torch.testing.assert_close(mask_w[1], rp.decay[1] * torch.tensor([[0., 1, 2], [1, 0, 1], [2, 1, 0]]))
    # rotary phase: row-major flat position times the per-pair angle, each angle used for two channels
    assert sin.shape == (2, 3, 8)
    torch.testing.assert_close(sin[1, 2], torch.sin(5 * rp.angle))
    torch.testing.assert_close(rp.angle[0::2], rp.angle[1::2])
    x = torch.randn(3, 8)
    assert torch.equal(rotate_pairs(x)[:, 0], -x[:, 1]) and torch.equal(rotate_pairs(x)[:, 1], x[:, 0])
    # the shift is a rotation of each channel pair: it keeps norms
    y = theta_shift(x, sin[0], cos[0])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def _pair(dim=16, heads=2, seed=0):
    torch.manual_seed(seed)
    dec = ManhattanSelfAttention(dim, heads, decomposed=True)
    full = ManhattanSelfAttention(dim, heads, decomposed=False)
    full.load_state_dict(dec.state_dict())
    rp_dec = ManhattanRelPos(dim, heads, 2, 4, decomposed=True)
    rp_full = ManhattanRelPos(dim, heads, 2, 4, decomposed=False)
    return dec, full, rp_dec, rp_full


def test_decomposed_equals_2d_without_content_term():
    """With q = 0 the logits are the decay alone; the 2-D softmax of gamma^(|di|+|dj|) factors into the
    H and W softmaxes, so both forms agree exactly."""
    dec, full, rp_dec, rp_full = _pair()
    with torch.no_grad():
        dec.q_proj.weight.zero_(), dec.q_proj.bias.zero_()
        full.q_proj.weight.zero_(), full.q_proj.bias.zero_()
        x = torch.randn(2, 5, 7, 16)
        a, b = dec(x, rp_dec(5, 7)), full(x, rp_full(5, 7))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_decomposed_is_2d_attention_with_factored_weights():
    """In general the decomposed form is 2-D attention whose weight of key (k, l) for query (i, j) is
    A_H[j](i, k) * A_W[k](j, l), each a softmax along one axis with its 1-D decay mask (the official
    relation); those weights are a distribution over the whole map."""
    dec, _, rp_dec, _ = _pair(seed=1)
    B, H, W, C, n = 2, 4, 5, 16, 2
    d = C // n
    x = torch.randn(B, H, W, C)
    sin, cos, mask_h, mask_w = rp_dec(H, W)
    with torch.no_grad():
        q = theta_shift(dec.q_proj(x).view(B, H, W, n, d).permute(0, 3, 1, 2, 4), sin, cos)   # (B, n, H, W, d)
        k = theta_shift(dec.k_proj(x).view(B, H, W, n, d).permute(0, 3, 1, 2, 4), sin, cos)
        v = dec.v_proj(x)
        lepe = dec.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        v = v.view(B, H, W, n, d).permute(0, 3, 1, 2, 4)
        s = d ** -0.5
        a_w = torch.softmax(torch.einsum("bnrjd,bnrld->bnrjl", q, k) * s + mask_w[None, :, None], -1)  # row r
        a_h = torch.softmax(torch.einsum("bnicd,bnkcd->bncik", q, k) * s + mask_h[None, :, None], -1)  # col c
        # weight[(i, j), (k, l)] = a_h[j](i, k) * a_w[k](j, l)
        weight = torch.einsum("bnjik,bnkjl->bnijkl", a_h, a_w)
        torch.testing.assert_close(weight.sum((-1, -2)), torch.ones(B, n, H, W))
        out = torch.einsum("bnijkl,bnkld->bijnd", weight, v).reshape(B, H, W, C)
        want = dec.out_proj(out + lepe)
        got = dec(x, rp_dec(H, W))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_full_form_is_masked_softmax_attention():
    _, full, _, rp_full = _pair(seed=2)
    B, H, W, C, n = 1, 3, 4, 16, 2
    d = C // n
    x = torch.randn(B, H, W, C)
    sin, cos, mask = rp_full(H, W)
    with torch.no_grad():
        q = theta_shift(full.q_proj(x).view(B, H, W, n, d).permute(0, 3, 1, 2, 4), sin, cos).flatten(2, 3)
        k = theta_shift(full.k_proj(x).view(B, H, W, n, d).permute(0, 3, 1, 2, 4), sin, cos).flatten(2, 3)
        v = full.v_proj(x)
        lepe = full.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        attn = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5 + mask, -1)
        out = (attn @ v.view(B, H * W, n, d).transpose(1, 2)).transpose(1, 2).reshape(B, H, W, C)
        torch.testing.assert_close(full(x, (sin, cos, mask)), full.out_proj(out + lepe), rtol=1e-5, atol=1e-6)


def test_head_width_must_be_even():
    with pytest.raises(ValueError, match="even head width"):
        ManhattanRelPos(12, 4)
