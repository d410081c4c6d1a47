"""HaloNet specifics: block layout, input-size constraint, the final 1x1 conv outside the stage taps, and block
sizes that follow the input size (scale())."""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.analysis import scale
from convscope.layers.mixers.halo_attention import HaloAttention
from convscope.models.halonet import HaloBlock, HaloNet, _block_sizes_at


def _meta(name, **kwargs):
    with torch.device("meta"):
        return convscope.create_model(name, **kwargs)


def _layout(model):
    return [tuple("attn" if hasattr(b, "self_attn") else "bottle" for b in stage) for stage in model.stages]


def test_block_layout_follows_byoanet_interleaving():
    # interleave_blocks(every=1) puts attention at odd positions, every=4 with d=4 at the last block only
    m = _meta("halonet50ts")
    assert _layout(m) == [("bottle",) * 3, ("bottle",) * 3 + ("attn",), ("bottle", "attn") * 3,
                          ("bottle", "attn", "bottle")]
    assert m.stages[1][3].self_attn.num_heads == 4 and m.stages[2][1].self_attn.num_heads == 8
    se = _meta("sehalonet33ts")
    assert _layout(se)[1] == ("bottle", "bottle", "attn")
    # strided queries where a stage opens with attention; SE on the 3x3 bottlenecks only
    assert se.stages[3][0].self_attn.stride == 2 and se.stages[3][0].self_attn.q.stride == (2, 2)
    assert type(se.stages[0][0].attn).__name__ == "SqueezeExcite"
    eca = _meta("eca_halonext26ts")
    assert eca.stages[0][0].conv2_kxk.conv.groups == 64 // 16 and eca.stages[3][0].self_attn.dim_head_qk == 16
    assert eca.stages[0][0].attn.conv.kernel_size == (3,)


def test_input_must_be_a_multiple_of_the_block_grid():
    m = HaloNet(depths=(1, 1, 1, 2), dims=(32, 64, 128, 256), blocks=(("bottle",), ("bottle",), ("attn",),
                                                                      ("attn", "attn")), num_classes=3).eval()
    assert m.traits.input_multiple == 256 and m.traits.min_input_size == (256, 256)
    with pytest.raises(ValueError, match="multiples of 256"):
        m(torch.randn(1, 3, 256, 320))
    with torch.no_grad():
        assert m(torch.randn(1, 3, 256, 512)).shape == (1, 3)
    # smaller blocks take smaller inputs: 4x4 blocks on the stride-32 map of a 128 input
    small = HaloNet(depths=(1, 1, 1, 2), dims=(32, 64, 128, 256), blocks=m_blocks(), block_sizes=(8, 8, 4, 4),
                    num_classes=3).eval()
    assert small.traits.input_multiple == 128
    with torch.no_grad():
        assert small(torch.randn(1, 3, 128, 384)).shape == (1, 3)


def m_blocks():
    return (("bottle",), ("bottle",), ("attn",), ("attn", "attn"))


def test_final_conv_is_in_the_features_not_in_the_taps():
    m = HaloNet(depths=(1, 1, 1, 1), dims=(32, 64, 128, 192), blocks=(("bottle",),) * 3 + (("attn",),),
                bottle_ratios=(0.25, 0.25, 0.25, 0.333), stem_pool=False, act="silu", attn_layer="se",
                num_features=96, num_classes=5).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        feats = m.forward_features(x)
        final, inter = m.forward_intermediates(x)
        early = m.forward_intermediates(x, indices=[1], stop_early=True)[0]
    assert m.num_features == 96 and feats.shape == (1, 96, 8, 8)
    assert [t.shape[1] for t in inter] == [32, 64, 128, 192]
    torch.testing.assert_close(final, feats)
    assert early.shape[1] == 64  # stopped at stage 1: no final conv
    backbone = convscope.models.FeatureExtractor(m, (1, 2))
    assert backbone.feature_info.channels() == [64, 128]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kind of each"):
        HaloNet(depths=(2, 2, 2, 2), blocks=(("bottle",),) * 4)
    with pytest.raises(ValueError, match="act must be"):
        HaloNet(act="gelu")
    with pytest.raises(ValueError, match="'bottle', 'attn' or 'bot'"):
        HaloBlock("conv", 8, 8, 1, 1.0, torch.nn.ReLU)
    with pytest.raises(TypeError):
        HaloNet(window_size=7)
    with pytest.raises(ValueError, match="needs img_size"):
        HaloNet(blocks=(("bottle",) * 2, ("bottle",) * 2, ("bottle", "attn"), ("bot", "bot")))


def test_block_sizes_follow_the_input_size():
    arch = convscope.models.model_arch("halonet26t")
    assert _block_sizes_at(arch, (256, 256))["block_sizes"] == (8, 8, 8, 8)
    # 352: the stride-16 map is 22 and the stride-32 map 11 (divisor nearest 8: 11); the last stage opens with
    # strided queries on the 22 map (an even block: 2 or 22, 22 the nearer) and then runs on the 11 map
    assert _block_sizes_at(arch, (352, 352))["block_sizes"] == (8, 8, 11, (22, 11))
    assert _block_sizes_at(arch, (320, 320))["block_sizes"] == (8, 8, 10, 10)
    cfg = scale("halonet26t", 2.0, "r")
    h, w = cfg.input_size[1:]
    with torch.device("meta"):
        model = cfg.build()
    assert h % model.traits.input_multiple == 0 and w % model.traits.input_multiple == 0
    assert all(isinstance(m, HaloAttention) for s in model.stages for b in s if hasattr(b, "self_attn")
               for m in [b.self_attn])
