"""MaxViT specifics: window / grid partitions, input sizes, relative position tables resampled as timm resamples
them, the TF-port details, features at strides 4..32, export."""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.layers.mixers.partition_attention import (
    PartitionAttention,
    RelPosBias2d,
    grid_partition,
    grid_unpartition,
    resize_rel_pos_table,
    window_partition,
    window_unpartition,
)
from convscope.models.maxvit import MaxViT, PartitionBlock

from ..conftest import rel_err


def _tiny(**kw) -> MaxViT:
    """A small MaxViT (one block per stage) that runs in a blink."""
    torch.manual_seed(0)
    return MaxViT(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), stem_width=16, **kw).eval()


# -- partitions ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(2, 3), (4, 4), (1, 6)])
def test_partition_unpartition_identity(size):
    x = torch.randn(2, 8, 12, 5)
    for part, unpart in ((window_partition, window_unpartition), (grid_partition, grid_unpartition)):
        p = part(x, size)
        assert p.shape == (2 * 8 * 12 // (size[0] * size[1]), size[0] * size[1], 5)
        torch.testing.assert_close(unpart(p, size, (8, 12)), x, rtol=0, atol=0)


def test_window_is_local_and_grid_is_dilated():
    x = torch.arange(8 * 12.0).reshape(1, 8, 12, 1)         # value = row * 12 + col
    w = window_partition(x, (2, 3))[0, :, 0]                  # first window: rows 0-1, cols 0-2
    assert w.tolist() == [0, 1, 2, 12, 13, 14]
    g = grid_partition(x, (2, 3))[0, :, 0]                    # first grid: rows 0, 4; cols 0, 4, 8
    assert g.tolist() == [0, 4, 8, 48, 52, 56]


# -- input sizes ---------------------------------------------------------------------------------------------------
def test_bad_size_raises_naming_the_multiple():
    m = _tiny()
    with pytest.raises(ValueError, match="multiples of 32.*100x96"):
        m(torch.randn(1, 3, 100, 96))
    with pytest.raises(ValueError, match="multiples of 32"):
        m.forward_intermediates(torch.randn(1, 3, 64, 80))
    mixer = PartitionAttention(32, "grid", splits=4, window_size=7)
    with pytest.raises(ValueError, match="multiples of 4"):
        mixer(torch.randn(1, 6, 8, 32))
    fixed = PartitionAttention(32, "block", partition_size=7)
    with pytest.raises(ValueError, match="multiples of 7x7"):
        fixed(torch.randn(1, 14, 15, 32))


@pytest.mark.parametrize("hw", [(32, 32), (64, 96), (160, 64)])
def test_partition_follows_input(hw):
    m = _tiny()
    with torch.no_grad():
        out = m(torch.randn(1, 3, *hw))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    blk = m.stages[0].blocks[0].attn_block.attn
    assert blk.partition_for((hw[0] // 4, hw[1] // 4)) == (hw[0] // 32, hw[1] // 32)


# -- relative position tables against timm -------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", [((12, 12), (7, 7)), ((7, 7), (6, 8)), ((7, 7), (16, 16)), ((16, 16), (2, 3))])
def test_rel_pos_table_resampling_equals_timm(timm, src, dst):
    from timm.layers import RelPosBiasTf, resize_rel_pos_bias_table

    torch.manual_seed(0)
    table = torch.randn(3, 2 * src[0] - 1, 2 * src[1] - 1)
    want = resize_rel_pos_bias_table(table, new_window_size=dst, new_bias_shape=(3, 2 * dst[0] - 1, 2 * dst[1] - 1))
    got = resize_rel_pos_table(table, dst)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-6
    # the full (heads, N, N) bias of a resampled partition, as timm's set_window_size gives it
    ours = RelPosBias2d(3, src)
    theirs = RelPosBiasTf(src, 3)
    with torch.no_grad():
        ours.relative_position_bias_table.copy_(table)
        theirs.relative_position_bias_table.copy_(table)
    theirs.set_window_size(dst)
    assert rel_err(ours(dst), theirs.get_bias()) < 1e-6
    # at its own size the table is used as it is
    torch.testing.assert_close(resize_rel_pos_table(table, src), table, rtol=0, atol=0)


def test_partition_block_equals_timm_at_built_window(timm):
    """The attention + FFN block of a 384 variant (tables built for 12x12) against timm's, on a 24x36 map."""
    from dataclasses import replace

    from timm.models.maxxvit import PartitionAttentionCl, _tf_cfg

    for partition in ("block", "grid"):
        cfg = replace(_tf_cfg()["transformer_cfg"], window_size=(12, 12), grid_size=(12, 12))
        torch.manual_seed(0)
        theirs = PartitionAttentionCl(64, partition, cfg).eval()
        with torch.no_grad():
            for p in theirs.parameters():
                p.normal_(0, 0.3)
        ours = PartitionBlock(64, partition, splits=2, window_size=12).eval()
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 24, 24, 64)
        with torch.no_grad():
            assert rel_err(ours(x), theirs(x)) < 1e-5
        # and on a non-square map, both resampling the 12x12 tables for a 12x18 partition
        theirs.set_partition_size((12, 18))
        x = torch.randn(1, 24, 36, 64)
        with torch.no_grad():
            assert rel_err(ours(x), theirs(x)) < 1e-5


# -- TF-port details -----------------------------------------------------------------------------------------------
def test_tf_port_details():
    with torch.device("meta"):
        m = convscope.create_model("maxvit_tiny_tf_224")
    blk = m.stages[1].blocks[0]
    assert blk.conv.conv2_kxk.stride == (2, 2) and blk.conv.conv2_kxk.tf_pad == (0, 1, 0, 1)  # TF "same", stride 2
    assert m.stem.conv1.tf_pad == (0, 1, 0, 1) and m.stem.conv2.tf_pad == (1, 1, 1, 1)
    assert blk.conv.pre_norm.eps == 1e-3 and blk.attn_block.norm1.eps == 1e-5 and m.head.norm.eps == 1e-5
    assert blk.attn_block.mlp.act.approximate == "tanh"
    assert blk.conv.se.fc1.out_channels == 128 // 4 and blk.attn_grid.attn.num_heads == 128 // 32
    assert m.stages[3].blocks[0].attn_block.attn.rel_pos.relative_position_bias_table.shape == (16, 13, 13)


# -- features ------------------------------------------------------------------------------------------------------
def test_features_at_strides_4_to_32():
    m = convscope.create_model("maxvit_tiny_tf_224", features_only=True).eval()
    assert [f["reduction"] for f in m.feature_info] == [4, 8, 16, 32]
    with torch.no_grad():
        feats = m(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6), (1, 512, 2, 3)]


# -- export --------------------------------------------------------------------------------------------------------
def test_torch_export_matches_eager():
    m = _tiny()
    x = torch.randn(1, 3, 64, 96)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x), rtol=1e-5, atol=1e-5)


def test_scale_keeps_heads_whole():
    from convscope.models.registry import family_of, model_arch

    spec = family_of("maxvit_tiny_tf_224").spec
    assert spec.quanta(model_arch("maxvit_tiny_tf_224")) == [32] * 4
    assert spec.rebuild(model_arch("maxvit_tiny_tf_384"), (1, 1, 2, 1), (32, 64, 96, 128), (256, 320)) == dict(
        depths=(1, 1, 2, 1), dims=(32, 64, 96, 128), window_size=(8, 10))
