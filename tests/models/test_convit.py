"""ConViT specifics: gated positional self-attention identities, its local init, the class token's late join,
input sizes."""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.layers.mixers.gpsa import GPSA, relative_offsets

from ..conftest import random_model


def test_relative_offsets_row_major():
    rel = relative_offsets(2, 3)[0]  # tokens (y, x) row-major: token 1 = (0, 1), token 5 = (1, 2)
    assert rel.shape == (6, 6, 3)
    assert rel[1, 5].tolist() == [1.0, 1.0, 2.0] and rel[5, 0].tolist() == [-2.0, -1.0, 5.0]
    assert (rel[range(6), range(6)] == 0).all()


def _gpsa(gate: float) -> GPSA:
    torch.manual_seed(0)
    op = GPSA(32, num_heads=4).eval()
    with torch.no_grad():
        op.gating_param.fill_(gate)
    return op


def test_closed_gate_is_content_attention():
    """sigmoid(-inf) = 0: GPSA is plain softmax(q k^T / sqrt(d)) attention (checked against SDPA)."""
    op = _gpsa(-1e4)
    x = torch.randn(2, 3, 4, 32)
    q, k = op.qk(x).reshape(2, 12, 2, 4, 8).permute(2, 0, 3, 1, 4)
    v = op.v(x).reshape(2, 12, 4, 8).transpose(1, 2)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 3, 4, 32)
    torch.testing.assert_close(op(x), op.proj(want), rtol=1e-5, atol=1e-5)


def test_open_gate_with_local_init_is_a_convolution():
    """sigmoid(+inf) = 1 and a strong local init: each head copies the token at its own offset (zero-padded at
    the border is not how softmax behaves, so check an interior token), with v = identity."""
    op = _gpsa(1e4)
    op.locality_strength = 50.0
    op.local_init()
    with torch.no_grad():
        op.proj.weight.copy_(torch.eye(32))
        op.proj.bias.zero_()
    x = torch.randn(1, 5, 5, 32)
    out = op(x)
    # 4 heads: a 2x2 patch, centre 0.5: head (h1, h2) peaks at offset (dx, dy) = (h2, h1) - 0.5 -> ties between
    # two offsets per axis, so the head averages the 4 tokens of the 2x2 block around the query's lower-right
    centre = out[0, 2, 2]
    for h in range(4):
        h1, h2 = h % 2, h // 2
        ys, xs = (2, 3) if h1 else (1, 2), (2, 3) if h2 else (1, 2)
        want = x[0, ys[0]:ys[1] + 1, xs[0]:xs[1] + 1, h * 8:(h + 1) * 8].mean((0, 1))
        torch.testing.assert_close(centre[h * 8:(h + 1) * 8], want, rtol=1e-4, atol=1e-4)


def test_class_token_joins_after_the_local_blocks():
    m = random_model("convit_tiny")
    assert [type(b.attn).__name__ for b in m.blocks] == ["GPSA"] * 10 + ["Attention"] * 2
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = m.forward_features(x)
        maps = m.forward_intermediates(x, intermediates_only=True)
    assert feats.shape == (1, 1 + 4 * 6, 192)
    assert [t.shape for t in maps] == [(1, 192, 4, 6)] * 4
    # before block 11 the class token is absent: changing it leaves the first three taps unchanged
    with torch.no_grad():
        m.cls_token.add_(1.0)
        maps2 = m.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(maps[:3], maps2[:3], strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(maps[3], maps2[3])


def test_sizes():
    m = random_model("convit_tiny")
    with torch.no_grad():
        assert m(torch.randn(1, 3, 48, 80)).shape == (1, 1000)
    with pytest.raises(ValueError, match="multiples of 16.*50x64"):
        m(torch.randn(1, 3, 50, 64))
    with pytest.raises(ValueError, match="equal dims"):
        convscope.create_model("convit_tiny", dims=(192, 192, 240, 192))
    shallow = convscope.create_model("convit_tiny", depths=(2, 2, 2, 2))  # fewer blocks than local_up_to_layer
    assert shallow.num_local == 7
