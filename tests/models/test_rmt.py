"""RMT specifics: per-stage MaSA form and decay, layer scale placement, odd input sizes, the official converter."""
from __future__ import annotations

import torch

import convscope
from convscope.models.rmt import convert_official


def _meta(name):
    with torch.device("meta"):
        return convscope.create_model(name)


def test_decomposed_stages_and_decays_follow_the_official_configs():
    forms = {"rmt_tiny": [True, True, False, False], "rmt_small": [True, True, True, False],
             "rmt_base": [True, True, True, False], "rmt_large": [True, True, True, False]}
    for name, want in forms.items():
        m = convscope.create_model(name) if name == "rmt_tiny" else _meta(name)
        assert [s.relpos.decomposed for s in m.stages] == want
        assert all(b.attn.decomposed == s.relpos.decomposed for s in m.stages for b in s.blocks)
    m = convscope.create_model("rmt_tiny")
    # gamma_h = 1 - 2^(-2 - heads_range * h / heads); stage 3: 8 heads, range 6
    h = torch.arange(8.0)
    torch.testing.assert_close(m.stages[2].relpos.decay.exp(), 1 - 2 ** (-2 - 6 * h / 8))


def test_layer_scale_only_in_base_and_large_last_two_stages():
    for name, want in {"rmt_small": [False] * 4, "rmt_base": [False, False, True, True]}.items():
        m = _meta(name)
        assert [s.blocks[0].gamma1 is not None for s in m.stages] == want


def test_odd_input_sizes_round_up_like_the_strided_convs():
    m = convscope.create_model("rmt_tiny").eval()
    x = torch.randn(1, 3, 65, 99)
    with torch.no_grad():
        maps = m.forward_intermediates(x, intermediates_only=True)
        out = m(x)
    assert [t.shape[-2:] for t in maps] == [(17, 25), (9, 13), (5, 7), (3, 4)]
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_pre_logits_is_the_head_projection():
    m = convscope.create_model("rmt_tiny", num_classes=0).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1024)
    assert m.num_features == 512 and m.head_hidden_size == 1024


def test_converter_maps_every_official_key():
    m = convscope.create_model("rmt_base", depths=(1, 1, 1, 1), dims=(80, 160, 320, 512))
    ours = m.state_dict()
    official = {
        "patch_embed.proj.0.weight": (40, 3, 3, 3), "layers.0.Relpos.decay": (5,),
        "layers.0.downsample.reduction.weight": (160, 80, 3, 3), "layers.2.downsample.norm.running_var": (512,),
        "layers.2.blocks.0.gamma_1": (1, 1, 1, 320), "layers.2.blocks.0.retention.lepe.conv.weight": (320, 1, 5, 5),
        "layers.1.blocks.0.ffn.dwconv.conv.bias": (640,), "layers.3.blocks.0.pos.conv.weight": (512, 1, 3, 3),
        "layers.3.blocks.0.retention_layer_norm.weight": (512,), "layers.3.blocks.0.final_layer_norm.bias": (512,),
        "proj.weight": (1024, 512), "norm.running_mean": (1024,), "head.weight": (1000, 1024),
    }
    got = convert_official({k: torch.zeros(s) for k, s in official.items()}, m)
    for k, v in got.items():
        assert k in ours and ours[k].shape == v.shape, k
