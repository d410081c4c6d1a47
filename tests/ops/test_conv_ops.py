"""Identity tests for the convolution operators in convscope.ops (TVConv, SGConv, DCLS, deformable conv)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.analysis import count
from convscope.ops import Dcls2d, DeformConv2d, SGConv1d, SGConv2d, TVConv, deform_conv2d


def _randomise(m: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return m


# -- TVConv ------------------------------------------------------------------------------------------------------
def test_tvconv_is_a_per_position_depthwise_conv():
    m = _randomise(TVConv(4, (5, 6), bias=True)).eval()
    x = torch.randn(2, 4, 5, 6)
    w = m.kernels()[0].view(4, 3, 3, 5, 6)
    xp = F.pad(x, (1, 1, 1, 1))
    ref = torch.zeros_like(x)
    for u in range(3):
        for v in range(3):
            ref += w[:, u, v] * xp[:, :, u:u + 5, v:v + 6]
    ref += m.biases()
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_tvconv_precomputed_equals_on_the_fly_and_needs_its_size():
    m = _randomise(TVConv(8, 7, kernel_size=5)).eval()
    x = torch.randn(2, 8, 7, 7)
    y = m(x)
    d = copy.deepcopy(m)
    d.materialize()
    d.materialize()  # idempotent
    assert not any(True for _ in d.parameters())
    torch.testing.assert_close(d(x), y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="7x7"):
        m(torch.randn(1, 8, 8, 7))


# -- SGConv ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("length", [10, 40])
def test_sgconv1d_fft_equals_direct_convolution(bidirectional, length):
    m = SGConv1d(6, kernel_dim=4, n_scales=3, bidirectional=bidirectional)  # kernel of 16 taps
    assert m.kernel().shape == (2 if bidirectional else 1, 6, 16)
    x = torch.randn(2, 6, length, dtype=torch.float64)
    m = m.double()
    w = m.full_kernel(length)
    ref = F.conv1d(x, w[:, None], padding=length, groups=6) + x * m.D[:, None]
    torch.testing.assert_close(m(x), ref, rtol=1e-9, atol=1e-9)


def test_sgconv1d_kernel_structure():
    m = SGConv1d(2, kernel_dim=4, n_scales=3, decay=0.5)
    raw = m._raw_kernel()
    # pieces: scale 0 (4 taps, weight 1), scale 1 (4 taps, weight 1/2), scale 2 (upsampled x2 to 8, weight 1/4)
    torch.testing.assert_close(raw[..., :4], m.kernel_list[0])
    torch.testing.assert_close(raw[..., 4:8], m.kernel_list[1] * 0.5)
    torch.testing.assert_close(raw[..., 8:], F.interpolate(m.kernel_list[2], scale_factor=2, mode="linear") * 0.25)
    torch.testing.assert_close(m.kernel().norm(dim=-1), torch.ones(1, 2))  # normalised at initialisation


@pytest.mark.parametrize("size", [(5, 7), (12, 12), (20, 9)])
def test_sgconv2d_fft_equals_direct_convolution(size):
    m = SGConv2d(3, kernel_dim=2, n_scales=3).double()  # 8x8 kernel, centre 4
    H, W = size
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    k = m.kernel()
    K, c = k.shape[-1], k.shape[-1] // 2
    ref = F.conv2d(F.pad(x, (c, K - 1 - c, c, K - 1 - c)), k[:, None], groups=3) + x * m.D[:, None, None]
    torch.testing.assert_close(m(x), ref, rtol=1e-9, atol=1e-9)
    d = copy.deepcopy(m)
    d.materialize()
    torch.testing.assert_close(d(x), m(x))


# -- DCLS --------------------------------------------------------------------------------------------------------
def test_dcls_at_integer_positions_is_a_dilated_conv():
    # 9 taps at the positions of a 3x3 kernel with dilation 3 inside a 7x7 window
    m = Dcls2d(4, 6, kernel_count=9, dilated_kernel_size=7, padding=3, groups=2)
    with torch.no_grad():
        rows, cols = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
        m.P[0].copy_(((cols.flatten() - 1) * 3).float())
        m.P[1].copy_(((rows.flatten() - 1) * 3).float())
    conv = nn.Conv2d(4, 6, 3, padding=3, dilation=3, groups=2)
    with torch.no_grad():
        conv.weight.copy_(m.weight.view(6, 2, 3, 3))
        conv.bias.copy_(m.bias)
    x = torch.randn(2, 4, 11, 9)
    torch.testing.assert_close(m(x), conv(x), rtol=1e-5, atol=1e-5)


def test_dcls_at_fractional_positions_interpolates_bilinearly():
    m = Dcls2d(1, 1, kernel_count=1, dilated_kernel_size=5, bias=False)
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.P.copy_(torch.tensor([0.25, -1.5]).view(2, 1, 1, 1))  # column +0.25, row -1.5
    k = m.kernel()[0, 0]
    expect = torch.zeros(5, 5)
    expect[0, 2], expect[0, 3], expect[1, 2], expect[1, 3] = 0.375, 0.125, 0.375, 0.125
    torch.testing.assert_close(k, 2 * expect, rtol=1e-5, atol=1e-6)
    d = copy.deepcopy(m)
    d.materialize()
    x = torch.randn(1, 1, 6, 6)
    torch.testing.assert_close(d(x), m(x))


def test_dcls_is_a_drop_in_for_convnext_depthwise_conv():
    from convscope.models import create_model
    from convscope.models.convnext import ConvNeXtBlock

    block = ConvNeXtBlock(32)
    dw = block.conv_dw
    n_before = sum(p.numel() for p in block.parameters())
    k = dw.kernel_size[0]
    block.conv_dw = Dcls2d(32, 32, kernel_count=k * k // 3, dilated_kernel_size=2 * k - 1, groups=32)
    n_after = sum(p.numel() for p in block.parameters())
    assert abs(n_after - n_before) <= 32  # weights + positions = k*k // 3 * 3 per channel
    x = torch.randn(2, 32, 9, 10)
    assert block(x).shape == x.shape
    model = create_model("convnext_atto", num_classes=5)
    for stage in model.stages:
        for b in stage.blocks:
            c = b.conv_dw.in_channels
            b.conv_dw = Dcls2d(c, c, kernel_count=16, dilated_kernel_size=13, groups=c)
    model(torch.randn(1, 3, 32, 32)).sum().backward()


# -- deformable convolution --------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 0, 1, 1), (1, 2, 2, 2),
                                                            (2, 3, 3, 4), (1, 1, 1, 8)])
@pytest.mark.parametrize("offset_groups", [1, 2])
def test_deform_conv_with_zero_offsets_and_unit_masks_is_conv2d(stride, padding, dilation, groups, offset_groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride, padding, dilation, groups)
    x = torch.randn(2, 8, 11, 13)
    y = conv(x)
    off = torch.zeros(2, 2 * offset_groups * 9, *y.shape[-2:])
    mask = torch.ones(2, offset_groups * 9, *y.shape[-2:])
    for _m in (None, mask):
        out = deform_conv2d(x, off, conv.weight, conv.bias, stride, padding, dilation, groups, mask)
        torch.testing.assert_close(out, y, rtol=1e-5, atol=1e-5)


def test_deform_conv_integer_offsets_shift_the_taps_and_masks_scale_them():
    x = torch.randn(1, 1, 6, 7)
    w = torch.zeros(1, 1, 1, 1) + 1
    off = torch.zeros(1, 2, 6, 7)
    off[:, 0], off[:, 1] = 1, -2  # sample x[i + 1, j - 2], zero outside
    out = deform_conv2d(x, off, w, mask=torch.full((1, 1, 6, 7), 0.5))
    ref = torch.zeros_like(x)
    ref[..., :5, 2:] = x[..., 1:, :5]
    torch.testing.assert_close(out, 0.5 * ref)
    off[:, 0] = 0.5  # half-way between two rows: their mean
    out = deform_conv2d(x, off, w)
    ref = torch.zeros_like(x)
    ref[..., :5, 2:] = (x[..., :5, :5] + x[..., 1:, :5]) / 2
    ref[..., 5, 2:] = x[..., 5, :5] / 2
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("mode", ["dense", "shared", "static"])
@pytest.mark.parametrize("modulated", [False, True])
def test_deform_conv_module_starts_as_its_conv(mode, modulated):
    m = DeformConv2d(8, 8, 3, groups=8, modulated=modulated, offset_mode=mode, max_offset=2.0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    conv.load_state_dict({"weight": m.weight, "bias": m.bias})
    x = torch.randn(2, 8, 9, 9)
    ref = conv(x) if not modulated else F.conv2d(x, m.weight * 0.5, m.bias, padding=1, groups=8)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_deform_conv_limited_range_and_fixed_shape():
    m = DeformConv2d(4, 4, 3, offset_mode="dense", max_offset=1.5)
    with torch.no_grad():
        m.offset.bias.normal_(0, 50)
    off, mask = m.offsets_and_mask(torch.randn(2, 4, 6, 6))
    assert mask is None and off.abs().max() <= 1.5
    s = DeformConv2d(4, 4, 3, offset_mode="shared")
    with torch.no_grad():
        s.offset.bias.normal_()
        s.offset.weight.normal_()
    off, _ = s.offsets_and_mask(torch.randn(2, 4, 6, 6))
    assert (off == off[..., :1, :1]).all() and not torch.equal(off[0], off[1])  # one shape per image
    st = DeformConv2d(4, 4, 3, offset_mode="static")
    off, _ = st.offsets_and_mask(torch.randn(2, 4, 6, 6))
    assert (off == off[:1, :, :1, :1]).all()


# -- as token mixers: fp32 / bf16 / channels_last, counted -------------------------------------------------------
_MIXER_CASES = {"tvconv": dict(size=(6, 5)), "dcls": dict(kernel_count=8, dilated_kernel_size=5),
                "deform": dict(), "sgconv2d": dict(kernel_dim=2, n_scales=3)}


@pytest.mark.parametrize("name", sorted(_MIXER_CASES))
def test_mixer_dtypes_memory_formats_and_counting(name):
    from convscope.layers import MIXERS

    torch.manual_seed(0)
    m = MIXERS[name](16, **_MIXER_CASES[name]).eval()
    assert m.channels_last is False
    x = torch.randn(2, 16, 6, 5)
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(m(x.contiguous(memory_format=torch.channels_last)), y, rtol=1e-5, atol=1e-5)
    yb = copy.deepcopy(m).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y, rtol=0.1, atol=0.1)
    res = count(m, inputs=x)
    assert not res.uncounted and res.totals.macs > 0


def test_materialize_deploy_transform_on_a_model():
    from convscope.deploy import get_transform, transform
    from convscope.models import create_model

    t = get_transform("materialize")
    torch.manual_seed(0)
    m = create_model("mixer_bench_sgconv2d", num_classes=4, in_chans=1).eval()
    assert t.applies_to(m) and not get_transform("reparameterize").applies_to(m)
    d = transform(m, "materialize")
    assert not t.applies_to(d) and t.applies_to(m)
    x = torch.randn(2, 1, 40, 48)
    torch.testing.assert_close(d(x), m(x))
    fresh = create_model("mixer_bench_sgconv2d", num_classes=4, in_chans=1)
    t.match_checkpoint(fresh, d.state_dict().keys())
    fresh.load_state_dict(d.state_dict())  # strict
    torch.testing.assert_close(fresh.eval()(x), m(x))


def test_tvconv_mixer_in_the_metaformer_skeleton_takes_per_stage_sizes():
    from convscope.models.metaformer import MetaFormer

    model = MetaFormer(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), token_mixers="tvconv", num_classes=5,
                       mixer_kwargs=[dict(size=(16, 24)), dict(size=(8, 12)), dict(size=(4, 6)), dict(size=(2, 3))])
    out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="16x24"):
        model(torch.randn(1, 3, 64, 64))
