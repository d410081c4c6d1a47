"""CrossViT specifics: per-branch input sizes, the class-token features and head, the branch taps, the official
key converter and the sizes scale() builds."""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.models import model_arch, model_card, resolve_name
from convscope.models.crossvit import CrossViT, _at_input_size, _multiple, convert_official

from ..conftest import random_model


@pytest.fixture(scope="module")
def tiny():
    return random_model("crossvit_tiny_240")


def test_names_and_input_multiples():
    assert resolve_name("crossvit_tiny_224") == "crossvit_tiny_240"  # the official name is an alias
    assert model_card("crossvit_18_dagger_408").input_size == (3, 408, 408)
    assert _multiple((1.0, 224 / 240), (12, 16)) == 120 and _multiple((1.0, 384 / 408), (12, 16)) == 204


def test_branches_scale_with_the_input(tiny):
    assert tiny.branch_sizes((240, 240)) == [(240, 240), (224, 224)]  # timm's built sizes at the default
    assert tiny.branch_sizes((120, 360)) == [(120, 360), (112, 336)]
    x = torch.randn(1, 3, 120, 360)
    with torch.no_grad():
        maps = tiny.forward_intermediates(x, intermediates_only=True)
        tokens = tiny.forward_intermediates(x, intermediates_only=True, output_fmt="NLC")
    assert [tuple(m.shape) for m in maps] == [(1, 96, 10, 30), (1, 192, 7, 21)]
    assert [tuple(t.shape) for t in tokens] == [(1, 300, 96), (1, 147, 192)]
    assert [f["reduction"] for f in tiny.feature_info] == [12, 17]  # 16 / (224/240), rounded as timm states it
    with pytest.raises(ValueError, match="multiples of 120"):
        tiny(torch.randn(1, 3, 240, 252))


def test_features_are_the_two_class_tokens(tiny):
    x = torch.randn(2, 3, 120, 120)
    with torch.no_grad():
        feats = tiny.forward_features(x)
        pre = tiny.forward_head(feats, pre_logits=True)
        logits = tiny(x)
    assert feats.shape == (2, 1, 96 + 192) and pre.shape == (2, 288)
    want = (tiny.head[0](pre[:, :96]) + tiny.head[1](pre[:, 96:])) / 2  # the mean of the branches' logits
    torch.testing.assert_close(logits, want)


def test_official_keys_convert():
    sd = {"pos_embed.0": torch.zeros(1), "cls_token.1": torch.zeros(1), "blocks.0.fusion.0.attn.wq.weight": 0}
    assert set(convert_official(sd, None)) == {"pos_embed_0", "cls_token_1", "blocks.0.fusion.0.attn.wq.weight"}


def test_sizes_scale_builds():
    arch = model_arch("crossvit_15_dagger_408")
    assert _at_input_size(arch, (408, 408)) == dict(img_size=408)  # fits its own 384/408
    # 336: the large branch takes the nearest whole number of patches to 224/240 of it (313.6 -> 320)
    got = _at_input_size(model_arch("crossvit_tiny_240"), (336, 336))
    assert got["img_size"] == 336 and got["img_scale"][1] * 336 == pytest.approx(320)
    with torch.device("meta"):
        m = convscope.create_model("crossvit_tiny_240", **got)
    assert m.traits.input_multiple == 336 // 4 and m.grids == [(28, 28), (20, 20)]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        CrossViT(embed_dim=(96, 190), num_heads=(3, 3))
    with pytest.raises(ValueError, match="one entry per branch"):
        CrossViT(num_heads=(3,))
    with pytest.raises(ValueError, match="patch sizes 12 and 16"):
        CrossViT(patch_size=(8, 16), multi_conv=True)
    with pytest.raises(TypeError):
        CrossViT(global_pool="avg")
