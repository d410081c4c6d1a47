"""TransNeXt specifics: the input size the model is built for, stage layout, ConvGLU width, the converter."""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.layers.mixers.aggregated_attention import AggregatedAttention, relative_position_cpb
from convscope.layers.mixers.length_scaled_attention import LengthScaledAttention
from convscope.models.transnext import convert_official

SMALL = dict(depths=(1, 1, 1, 1))  # one block per stage keeps these tests fast


def _meta(name, **kw):
    with torch.device("meta"):
        return convscope.create_model(name, **kw)


def test_other_sizes_need_a_model_built_for_them():
    m = convscope.create_model("transnext_micro", img_size=(64, 96), **SMALL).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 64, 96))
        maps = m.forward_intermediates(torch.randn(1, 3, 64, 96), intermediates_only=True)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert [t.shape[-2:] for t in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    with pytest.raises(ValueError, match="only takes 64x96 inputs.*img_size"):
        m(torch.randn(1, 3, 96, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        convscope.create_model("transnext_micro", img_size=100, **SMALL)


def test_stage_layout_at_224_and_384():
    m = _meta("transnext_micro")
    attns = [s.blocks[0].attn for s in m.stages]
    assert [type(a) for a in attns] == [AggregatedAttention] * 3 + [LengthScaledAttention]
    assert [a.pool_size for a in attns[:3]] == [(7, 7)] * 3
    assert m.stages[0].blocks[0].mlp.fc1.out_features == 2 * int(2 * 8 * 48 / 3)
    assert m.stages[3].blocks[0].mlp.fc1.out_features == 2 * int(2 * 4 * 384 / 3)
    big = _meta("transnext_small_384")
    assert [s.blocks[0].attn.pool_size for s in big.stages[:3]] == [(12, 12)] * 3
    # relative coordinates of the 384 model stay scaled to the 224 pre-training grid (56 at stride 4)
    index, table = relative_position_cpb((96, 96), (12, 12), (56, 56))
    assert torch.equal(big.stages[0].rel_index, index) and torch.equal(big.stages[0].rel_table, table)
    assert big.traits.fixed_input_size == (384, 384)


def test_converter_maps_every_official_key():
    m = convscope.create_model("transnext_micro", **SMALL)
    ours = m.state_dict()
    official = {
        "patch_embed1.proj.weight": (48, 3, 7, 7), "patch_embed1.norm.bias": (48,),
        "patch_embed3.proj.weight": (192, 96, 3, 3), "norm2.weight": (96,), "head.bias": (1000,),
        "block1.0.attn.learnable_tokens": (2, 24, 9), "block1.0.mlp.dwconv.dwconv.weight": (256, 1, 3, 3),
        "block4.0.attn.qkv.weight": (1152, 384), "block3.0.attn.cpb_fc2.bias": (8,),
    }
    got = convert_official({k: torch.zeros(s) for k, s in official.items()}, m)
    for k, v in got.items():
        assert k in ours and ours[k].shape == v.shape, k


def test_micro_aaaa_256_aggregates_in_every_stage():
    m = _meta("transnext_micro_aaaa_256")
    attns = [s.blocks[0].attn for s in m.stages]
    assert [type(a) for a in attns] == [AggregatedAttention] * 4  # A-A-A-A: no full-attention stage
    assert [a.pool_size for a in attns] == [(4, 4)] * 4  # 64/16, 32/8, 16/4, 8/2
    assert m.traits.fixed_input_size == (256, 256) and m.card.input_size == (3, 256, 256)
    # relative coordinates scaled to its own 256 grid (64 at stride 4): pre-trained at 256
    index, table = relative_position_cpb((64, 64), (4, 4), (64, 64))
    assert torch.equal(m.stages[0].rel_index, index) and torch.equal(m.stages[0].rel_table, table)
