"""MOAT: blocks against a direct re-derivation of the official TensorFlow code, parameter counts equal to the
official table (with and without position embedding), window attention, TF "same" padding, sizes."""
from __future__ import annotations

import math

import pytest
import torch

import convscope
from convscope.layers import RelPosWindowAttention
from convscope.models.moat import MOATBlock, SamePool2d, tf_same_padding

from ..conftest import meta_param_count, randomize_, rel_err


# -- a straightforward reference, one image at a time, channels-last, following the TF code's op order ----------
def _pad_same(x, k, s):
    """x (H, W, C) zero-padded as TF 'same' does, and the output size."""
    H, W, _ = x.shape
    oh, ow = math.ceil(H / s), math.ceil(W / s)
    ph, pw = max((oh - 1) * s + k - H, 0), max((ow - 1) * s + k - W, 0)
    out = torch.zeros(H + ph, W + pw, x.shape[2], dtype=x.dtype)
    out[ph // 2:ph // 2 + H, pw // 2:pw // 2 + W] = x
    return out, oh, ow, ph // 2, pw // 2


def _ref_dw(x, w, s):  # w (C, 1, k, k)
    k = w.shape[-1]
    xp, oh, ow, _, _ = _pad_same(x, k, s)
    out = torch.zeros(oh, ow, x.shape[2], dtype=x.dtype)
    for dy in range(k):
        for dx in range(k):
            out += xp[dy:dy + s * (oh - 1) + 1:s, dx:dx + s * (ow - 1) + 1:s] * w[:, 0, dy, dx]
    return out


def _ref_pool(x, k, s):  # TF 'same' average pooling, padding excluded
    H, W, _ = x.shape
    oh, ow = math.ceil(H / s), math.ceil(W / s)
    _, _, _, pt, pl = _pad_same(x, k, s)
    out = torch.zeros(oh, ow, x.shape[2], dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - pt, j * s - pl
            win = x[max(r0, 0):min(r0 + k, H), max(c0, 0):min(c0 + k, W)]
            out[i, j] = win.reshape(-1, x.shape[2]).mean(0)
    return out


def _ref_bn(x, bn):
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + 1e-3) * bn.weight + bn.bias


def _ref_ln(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _dense(x, conv):  # 1x1 conv / linear on channels-last
    w = conv.weight.reshape(conv.weight.shape[0], -1)
    y = torch.einsum("...c,oc->...o", x, w)
    return y + conv.bias if conv.bias is not None else y


def _lookup(length):  # TF generate_lookup_tensor: L[n, m, v] = 1{m - n + length - 1 = v}
    L = torch.zeros(length, length, 2 * length - 1, dtype=torch.float64)
    for i in range(length):
        for x in range(length):
            L[i, x, x - i + length - 1] = 1
    return L


def _resize_bilinear(t, oh, ow):  # tf.image.resize bilinear, half-pixel centres, no antialias; t (N, h, w)
    _, h, w = t.shape

    def axis(o, i):
        c = ((torch.arange(o, dtype=torch.float64) + 0.5) * i / o - 0.5).clamp(min=0)
        lo = c.floor().long().clamp(max=i - 1)
        return lo, (lo + 1).clamp(max=i - 1), c - lo
    y0, y1, fy = axis(oh, h)
    x0, x1, fx = axis(ow, w)
    top = t[:, y0][:, :, x0] * (1 - fx) + t[:, y0][:, :, x1] * fx
    bot = t[:, y1][:, :, x0] * (1 - fx) + t[:, y1][:, :, x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]


def _ref_attention(x, attn, wh, ww):
    """Windowed multi-head attention on (H, W, C), TF's einsums: q/k/v 'SC,CNK->SNK', q scaled, logits
    'SNK,TNK->NST' + the reindexed relative position embedding, softmax, 'NST,TNK->SNK', o 'SNK,NKC->SC'."""
    H, W, C = x.shape
    N, K = attn.num_heads, attn.head_dim
    Wqkv, bqkv = attn.qkv.weight, attn.qkv.bias
    Wq, Wk, Wv = (Wqkv[i * C:(i + 1) * C].reshape(N, K, C).permute(2, 0, 1) for i in range(3))
    bq, bk, bv = (bqkv[i * C:(i + 1) * C].reshape(N, K) for i in range(3))
    Wo = attn.proj.weight.reshape(C, N, K).permute(1, 2, 0)
    bias = None
    if attn.rel_pos is not None:
        table = _resize_bilinear(attn.rel_pos, 2 * wh - 1, 2 * ww - 1)
        t = torch.einsum("nhw,ixh->nixw", table, _lookup(wh))
        bias = torch.einsum("nixw,jyw->nijxy", t, _lookup(ww)).reshape(N, wh * ww, wh * ww)
    out = torch.zeros_like(x)
    for a in range(H // wh):
        for b in range(W // ww):
            win = x[a * wh:(a + 1) * wh, b * ww:(b + 1) * ww].reshape(wh * ww, C)
            q = (torch.einsum("sc,cnk->snk", win, Wq) + bq) * K ** -0.5
            k = torch.einsum("sc,cnk->snk", win, Wk) + bk
            v = torch.einsum("sc,cnk->snk", win, Wv) + bv
            logits = torch.einsum("snk,tnk->nst", q, k)
            if bias is not None:
                logits = logits + bias
            o = torch.einsum("nst,tnk->snk", logits.softmax(-1), v)
            o = torch.einsum("snk,nkc->sc", o, Wo) + attn.proj.bias
            out[a * wh:(a + 1) * wh, b * ww:(b + 1) * ww] = o.reshape(wh, ww, C)
    return out


def ref_block(blk: MOATBlock, x: torch.Tensor, stride: int, pool: int, window) -> torch.Tensor:
    """One MOAT (or MBConv) block on one image x (C, H, W) -> (C, H', W'), as moat_blocks.py computes it."""
    x = x.permute(1, 2, 0)
    sc = _ref_pool(x, pool, stride) if stride > 1 else x
    if isinstance(blk.shortcut, torch.nn.Conv2d):
        sc = _dense(sc, blk.shortcut)
    y = _gelu(_ref_bn(_dense(_ref_bn(x, blk.pre_norm), blk.conv_expand), blk.norm_expand))
    y = _gelu(_ref_bn(_ref_dw(y, blk.conv_dw.weight, stride), blk.norm_dw))
    if not isinstance(blk.se, torch.nn.Identity):  # SE: mean -> reduce -> swish -> expand -> sigmoid gate
        s = _dense(y.mean((0, 1)), blk.se.fc1)
        s = _dense(s * torch.sigmoid(s), blk.se.fc2)
        y = y * torch.sigmoid(s)
    out = sc + _dense(y, blk.conv_shrink)
    if blk.attn is not None:
        H, W, _ = out.shape
        wh, ww = (H, W) if window is None else window
        out = out + _ref_attention(_ref_ln(out, blk.norm_attn), blk.attn, wh, ww)
    return out.permute(2, 0, 1)


BLOCK_CASES = [  # in, out, stride, attention, se, window, pos size, pool, input (H, W)
    (16, 64, 2, True, None, None, 7, 2, (14, 10)),       # stride-2 MOAT block, global, table resized 13 -> 13x9
    (64, 64, 1, True, None, None, 7, 2, (7, 7)),         # stride 1, table used as is
    (64, 64, 1, True, None, (4, 3), 7, 2, (8, 9)),       # windows, resized table
    (32, 64, 2, True, None, (3, 2), 7, 3, (11, 8)),      # odd side (symmetric padding), pool 3
    (16, 32, 2, False, 0.25, None, None, 2, (9, 12)),    # MBConv with SE
    (32, 32, 1, False, 0.25, None, None, 2, (6, 5)),
    (32, 64, 1, True, None, None, None, 2, (5, 6)),      # no position embedding
]


@pytest.mark.parametrize("case", BLOCK_CASES)
def test_block_matches_reference(case):
    cin, cout, stride, attention, se, window, pos, pool, (h, w) = case
    blk = MOATBlock(cin, cout, stride, 4, se, attention, 32, window, pos, pool)
    randomize_(blk, seed=3).eval().double()
    if attention and pos is not None:
        assert (blk.attn.rel_pos < 0).any() and (blk.attn.rel_pos > 0).any()
    assert (blk.norm_dw.weight < 0).any() and (blk.norm_dw.weight > 0).any()  # both signs
    x = torch.randn(2, cin, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = blk(x)
        want = torch.stack([ref_block(blk, xi, stride, pool, window) for xi in x])
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-10


def test_same_padding_and_pool():
    assert tf_same_padding(224, 3, 2) == (0, 1) and tf_same_padding(7, 3, 2) == (1, 1)
    assert tf_same_padding(10, 3, 1) == (1, 1)
    x = torch.randn(1, 3, 7, 6, dtype=torch.float64)
    for k in (2, 3):
        want = _ref_pool(x[0].permute(1, 2, 0), k, 2).permute(2, 0, 1)
        torch.testing.assert_close(SamePool2d(k, 2)(x)[0], want)


# -- model level ---------------------------------------------------------------------------------------------------
# The official table prints params to 0.1 M; ours round to exactly those figures, with and without the relative
# position embedding (the "no_pe" checkpoints).
PUBLISHED_M = {"moat_0": 27.8, "moat_1": 41.6, "moat_2": 73.4, "moat_3": 190.0, "moat_4": 483.2, "tiny_moat_0": 3.4,
               "tiny_moat_1": 5.1, "tiny_moat_2": 9.8, "tiny_moat_3": 19.5}
NO_PE_M = {"moat_0": 27.8, "moat_1": 41.5, "moat_2": 73.2, "moat_3": 189.5, "moat_4": 482.5, "tiny_moat_0": 3.3,
           "tiny_moat_1": 5.1, "tiny_moat_2": 9.7, "tiny_moat_3": 19.5}


@pytest.mark.parametrize("name", sorted(NO_PE_M))
def test_params_equal_official_table(name):
    assert round(meta_param_count(name)[0] / 1e6, 1) == PUBLISHED_M[name]
    assert round(meta_param_count(name)[0] / 1e6, 3) == convscope.model_card(name).params_m
    with torch.device("meta"):
        m = convscope.create_model(name, pos_embed=False)
    assert round(sum(p.numel() for p in m.parameters()) / 1e6, 1) == NO_PE_M[name]


def test_model_any_size_and_windowed_form():
    torch.manual_seed(0)
    m = convscope.create_model("tiny_moat_0", num_classes=5).eval()
    with torch.no_grad():
        for h, w in ((64, 96), (70, 45), (32, 32)):
            assert m(torch.randn(1, 3, h, w)).shape == (1, 5)
    mw = convscope.create_model("tiny_moat_0", num_classes=5, window_size=(None, None, 14, 7)).eval()
    mw.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # at 224 the 14x14 / 7x7 windows are the whole maps: the same network
        torch.testing.assert_close(mw(x), m(x))
        with pytest.raises(ValueError, match="multiples of 224; got 256x224"):
            mw(torch.randn(1, 3, 256, 224))
        assert mw(torch.randn(1, 3, 448, 224)).shape == (1, 5)
    with pytest.raises(ValueError, match="multiples of the window 4x4; got 6x8"):
        RelPosWindowAttention(64, window_size=4)(torch.randn(1, 64, 6, 8))


def test_window_attention_is_global_attention_per_window():
    """Windows of a map attend independently: the windowed result equals global attention run per tile."""
    attn = randomize_(RelPosWindowAttention(64, 32, window_size=(3, 4), pos_embed_size=5)).eval()
    glob = RelPosWindowAttention(64, 32, window_size=None, pos_embed_size=5).eval()
    glob.load_state_dict(attn.state_dict())
    x = torch.randn(2, 64, 6, 8)
    with torch.no_grad():
        y = attn(x)
        for a in range(2):
            for b in range(2):
                tile = x[:, :, 3 * a:3 * a + 3, 4 * b:4 * b + 4]
                torch.testing.assert_close(y[:, :, 3 * a:3 * a + 3, 4 * b:4 * b + 4], glob(tile))


def test_official_drop_path_schedule():
    m = convscope.create_model("tiny_moat_0", drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for s in m.stages for b in s.blocks]
    assert rates == pytest.approx([0.2 * i / 14 for i in range(14)])
