"""Bottleneck attention: timm's BottleneckAttn to 1e-5 (same parameter names), plain attention when the relative
tables are zero, the fixed map size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convscope.layers.mixers.bottleneck_attention import BottleneckAttention

from ..conftest import import_timm, randomize_, rel_err


@pytest.mark.parametrize("stride", [1, 2])
def test_matches_timm(stride):
    import_timm()
    from timm.layers.bottleneck_attn import BottleneckAttn
    theirs = randomize_(BottleneckAttn(32, feat_size=(6, 6), stride=stride, num_heads=4), seed=2).eval()
    ours = BottleneckAttention(32, (6, 6), stride=stride, num_heads=4).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) < 1e-5


def test_zero_tables_give_plain_attention():
    m = BottleneckAttention(16, (4, 4), num_heads=2).eval()
    with torch.no_grad():
        m.pos_embed.height_rel.zero_()
        m.pos_embed.width_rel.zero_()
        x = torch.randn(1, 16, 4, 4)
        q, k, v = m.qkv(x).flatten(2).transpose(1, 2).reshape(1, 16, 3, 2, 8).permute(2, 0, 3, 1, 4)
        want = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(1, 16, 4, 4)
        assert rel_err(m(x), want) < 1e-6
    with pytest.raises(ValueError, match="4x4"):
        m(torch.randn(1, 16, 4, 8))
