"""VOLO specifics: outlook attention identities, the token-labelling head at evaluation, input sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import convscope
from convscope.layers.mixers.outlook_attention import OutlookAttention
from convscope.models.vit_base import resample_pos_embed

from ..conftest import random_model


def test_outlook_1x1_kernel_is_a_pointwise_projection():
    """k=1: each window holds one value and softmax over one weight is 1, so out = proj(v(x))."""
    torch.manual_seed(0)
    op = OutlookAttention(32, num_heads=4, kernel_size=1, padding=0, stride=1).eval()
    x = torch.randn(2, 5, 7, 32)
    torch.testing.assert_close(op(x), op.proj(op.v(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hw", [(6, 6), (5, 7)])
def test_outlook_uniform_weights_is_a_double_box_filter(hw):
    """Zero attention logits give uniform 1/k^2 weights: every window writes its mean to all its k^2 positions,
    and folding sums the windows, so out = proj(k^2 * box(box(v))) with zero padding (stride 1)."""
    torch.manual_seed(0)
    op = OutlookAttention(16, num_heads=2, kernel_size=3, padding=1, stride=1).eval()
    with torch.no_grad():
        op.attn.weight.zero_()
        op.attn.bias.zero_()
    x = torch.randn(1, *hw, 16)
    v = op.v(x).permute(0, 3, 1, 2)
    box = lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=True)  # noqa: E731
    want = op.proj((9 * box(box(v))).permute(0, 2, 3, 1))
    torch.testing.assert_close(op(x), want, rtol=1e-5, atol=1e-5)


def test_outlook_stride_two_keeps_the_map_size_for_odd_sides():
    op = OutlookAttention(16, num_heads=2, kernel_size=3, padding=1, stride=2)
    assert op(torch.randn(1, 7, 9, 16)).shape == (1, 7, 9, 16)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        OutlookAttention(30, num_heads=4)


def test_eval_logits_add_half_the_token_max():
    m = random_model("volo_d1_224")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        cls, aux = m.forward_dense(x)
        torch.testing.assert_close(m(x), cls + 0.5 * aux.max(dim=1).values, rtol=1e-5, atol=1e-5)
        assert aux.shape == (1, 4 * 6, 1000)


def test_sizes_and_position_embedding():
    m = random_model("volo_d1_224")
    pos = m.pos_embed
    assert resample_pos_embed(pos, (14, 14)) is pos  # the native grid is untouched
    assert resample_pos_embed(pos, (12, 16)).shape == (1, 12, 16, 384)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 96, 64)).shape == (1, 1000)
        maps = m.forward_intermediates(torch.randn(1, 3, 96, 64), intermediates_only=True)
        tokens = m.forward_intermediates(torch.randn(1, 3, 96, 64), intermediates_only=True, output_fmt="NLC")
    assert [t.shape for t in maps] == [(1, 192, 12, 8)] + [(1, 384, 6, 4)] * 3
    assert [t.shape for t in tokens] == [(1, 96, 192)] + [(1, 24, 384)] * 3
    with pytest.raises(ValueError, match="multiples of 16.*100x96"):
        m(torch.randn(1, 3, 100, 96))


def test_backbone_and_scaled_build():
    backbone = convscope.create_model("volo_d1_224", features_only=True, out_indices=(0, 1))
    assert backbone.feature_info.reduction() == [8, 16] and len(backbone.model.network) == 3
    assert backbone.model.post_network is None
    with pytest.raises(ValueError, match="head dim"):
        convscope.create_model("volo_d1_224", embed_dims=(200, 384, 384, 384))
