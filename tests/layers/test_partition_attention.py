"""PartitionAttention (MaxViT's block / grid attention): signature, the bias lookup, SDPA against explicit maths."""
from __future__ import annotations

import pytest
import torch

from convscope.layers.mixers.partition_attention import (
    PartitionAttention,
    RelPosBias2d,
    grid_partition,
    grid_unpartition,
    window_partition,
    window_unpartition,
)


def test_rejects_unknown_option_and_bad_arguments():
    with pytest.raises(TypeError, match="kernel_sise"):
        PartitionAttention(64, splits=2, window_size=7, kernel_sise=3)
    with pytest.raises(ValueError, match="exactly one"):
        PartitionAttention(64, partition_size=7, splits=2)
    with pytest.raises(ValueError, match="'block' or 'grid'"):
        PartitionAttention(64, "shifted", partition_size=7)
    with pytest.raises(ValueError, match="multiple of head_dim"):
        PartitionAttention(48, partition_size=7)


def test_bias_is_indexed_by_key_minus_query_offset():
    rp = RelPosBias2d(2, (3, 4))
    table = rp.relative_position_bias_table
    bias = rp((3, 4))
    assert bias.shape == (2, 12, 12)
    for (i, j, k, m) in [(0, 0, 2, 3), (2, 3, 0, 0), (1, 2, 1, 0), (1, 1, 1, 1)]:
        assert bias[:, i * 4 + j, k * 4 + m].tolist() == table[:, k - i + 2, m - j + 3].tolist()


@pytest.mark.parametrize("partition", ["block", "grid"])
def test_equals_explicit_attention_per_partition(partition):
    torch.manual_seed(0)
    m = PartitionAttention(64, partition, partition_size=(2, 3)).eval()
    with torch.no_grad():
        m.rel_pos.relative_position_bias_table.normal_()
    x = torch.randn(2, 4, 6, 64)
    part, unpart = (window_partition, window_unpartition) if partition == "block" else (grid_partition,
                                                                                           grid_unpartition)
    t = part(x, (2, 3))                                        # (B', 6, C)
    q, k, v = m.qkv(t).reshape(t.shape[0], 6, 3, 2, 32).permute(2, 0, 3, 1, 4)
    a = (q @ k.transpose(-1, -2)) * 32 ** -0.5 + m.rel_pos((2, 3))
    y = (a.softmax(-1) @ v).transpose(1, 2).reshape(t.shape[0], 6, 64)
    want = unpart(m.proj(y), (2, 3), (4, 6))
    with torch.no_grad():
        torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)


def test_follows_the_map_with_splits():
    m = PartitionAttention(32, "grid", splits=2, window_size=3).eval()
    for hw in [(6, 6), (4, 8), (2, 2)]:
        assert m.partition_for(hw) == (hw[0] // 2, hw[1] // 2)
        with torch.no_grad():
            assert m(torch.randn(1, *hw, 32)).shape == (1, *hw, 32)
