"""Output stride by dilation: the stage strides, and the atrous identity (the dilated network's maps, subsampled
by the strides removed, equal the original network's maps)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convscope.deploy.export import export_program
from convscope.heads import StrideFreeConv2d, aspp_rates, create_segmenter, dilate_backbone_
from tests.conftest import random_model


@pytest.mark.parametrize("output_stride, strides", [(16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])])
@pytest.mark.parametrize("name, family", [("convnext_atto", "convnext"), ("inception_next_atto", "inception_next")])
def test_dilated_maps_subsampled_equal_the_original_maps(name, family, output_stride, strides):
    backbone = random_model(name, features_only=True)  # weights far from init: layer scales are not 1e-6
    dilated = copy.deepcopy(backbone)
    assert dilate_backbone_(dilated, output_stride, family) == strides
    assert dilated.feature_info.reduction() == strides
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref, out = backbone(x), dilated(x)
    for r_old, r_new, a, b in zip([4, 8, 16, 32], strides, ref, out, strict=True):
        assert b.shape[-2:] == (64 // r_new, 96 // r_new)
        f = r_old // r_new
        torch.testing.assert_close(b[..., ::f, ::f], a, rtol=1e-4, atol=1e-5)
    # the identity is not vacuous: the dilated last map differs from the original upsampled by repetition
    last = ref[-1].repeat_interleave(32 // strides[-1], -1).repeat_interleave(32 // strides[-1], -2)
    assert (out[-1] - last).abs().max() > 1e-2


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), ((1, 5), 2, (0, 2))])
@pytest.mark.parametrize("factor", [1, 2])
def test_stride_free_conv_at_factor_times_stride_equals_the_strided_conv(kernel, stride, padding, factor):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, kernel, stride, padding)
    free = StrideFreeConv2d(conv, factor)
    assert free.weight is conv.weight and free.stride == (1, 1)
    x = torch.randn(1, 4, 16, 24)            # the map at full resolution X; the strided conv sees X[::factor]
    with torch.no_grad():
        ref = conv(x[..., ::factor, ::factor])
        out = free(x)
    assert out.shape[-2:] == x.shape[-2:]
    step = factor * stride
    torch.testing.assert_close(out[..., ::step, ::step], ref)


def test_segmenter_output_stride_and_aspp_rates():
    with torch.device("meta"):
        seg = create_segmenter("convnext_atto", "deeplabv3plus", 3, output_stride=8)
    assert seg.feature_info.reduction() == [4, 8, 8, 8]
    rates = [b[0].dilation for b in seg.head.aspp.branches[1:4]]
    assert rates == [(12, 12), (24, 24), (36, 36)]
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(32) == (3, 6, 9)


@pytest.mark.parametrize("name", ["caformer_s18", "poolformerv2_s12", "replknet_31b", "volo_d1_224"])
def test_families_that_cannot_dilate_raise_one_line(name):
    with torch.device("meta"), pytest.raises(ValueError, match="output_stride needs a pure-conv backbone") as info:
        create_segmenter(name, "fcn", 3, output_stride=16)
    assert "\n" not in str(info.value)


def test_a_dilated_segmenter_exports():
    torch.manual_seed(0)
    seg = create_segmenter("convnext_atto", "fcn", 3, output_stride=16, channels=16).eval()
    x = torch.randn(1, 3, 64, 96)
    program = export_program(seg, x)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), seg(x))
