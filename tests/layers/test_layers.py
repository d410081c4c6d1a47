"""Shared layers against their definitions in the papers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convscope.layers import (
    MIXERS,
    Attention,
    DropPath,
    GlobalResponseNorm,
    GroupNorm1,
    InceptionDWConv2d,
    LayerNorm2d,
    LayerScale,
    Pooling,
    RandomMixing,
    SepConv,
    SqueezeExcite,
    StarReLU,
    drop_path_rates,
)
from convscope.models.metaformer import MetaFormer

torch.manual_seed(0)


def test_layernorm2d_is_channel_layernorm():
    x = torch.randn(2, 8, 5, 7)
    ln = LayerNorm2d(8)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    want = F.layer_norm(x.permute(0, 2, 3, 1), (8,), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), want)


def test_groupnorm1_is_modified_layernorm():
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    gn = GroupNorm1(8, eps=1e-6, bias=False).double()
    torch.nn.init.normal_(gn.weight)
    mu = x.mean((1, 2, 3), keepdim=True)
    var = (x - mu).pow(2).mean((1, 2, 3), keepdim=True)
    want = (x - mu) / (var + 1e-6).sqrt() * gn.weight.view(1, -1, 1, 1)
    torch.testing.assert_close(gn(x), want)
    assert gn.bias is None


def test_grn_starts_as_identity_and_matches_formula():
    x = torch.randn(2, 5, 6, 16, dtype=torch.float64)  # channels-last
    grn = GlobalResponseNorm(16).double()
    torch.testing.assert_close(grn(x), x)
    torch.nn.init.normal_(grn.weight)
    torch.nn.init.normal_(grn.bias)
    gx = torch.sqrt((x ** 2).sum((1, 2), keepdim=True))
    nx = gx / (gx.mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), grn.weight * (x * nx) + grn.bias + x)
    cf = GlobalResponseNorm(16, channels_last=False).double()
    cf.load_state_dict(grn.state_dict())
    torch.testing.assert_close(cf(x.permute(0, 3, 1, 2)), grn(x).permute(0, 3, 1, 2))


def test_star_relu():
    act = StarReLU(scale_value=0.8, bias_value=-0.1)
    x = torch.linspace(-2, 2, 11)
    torch.testing.assert_close(act(x), 0.8 * x.clamp_min(0) ** 2 - 0.1)
    assert act.scale.requires_grad and act.bias.requires_grad


def test_drop_path_keeps_expectation_and_is_identity_in_eval():
    dp = DropPath(0.25)
    x = torch.ones(20000, 3)
    y = dp.train()(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.02
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.75)))
    assert torch.all(y == y[:, :1])  # per sample, not per element
    assert torch.equal(dp.eval()(x), x)


def test_drop_path_rates_rise_linearly():
    rates = drop_path_rates(0.3, (2, 2, 6, 2))
    flat = [r for stage in rates for r in stage]
    assert [len(s) for s in rates] == [2, 2, 6, 2]
    assert flat[0] == 0 and flat[-1] == pytest.approx(0.3)
    assert all(b > a for a, b in zip(flat, flat[1:], strict=False))


def test_layer_scale_layouts():
    ls = LayerScale(4, 0.5, channels_first=True)
    torch.testing.assert_close(ls(torch.ones(1, 4, 2, 2)), torch.full((1, 4, 2, 2), 0.5))
    ls2 = LayerScale(4, 0.5)
    torch.testing.assert_close(ls2(torch.ones(1, 3, 4)), torch.full((1, 3, 4), 0.5))


def test_inception_dwconv_split_and_identity_branch():
    m = InceptionDWConv2d(64, band_kernel_size=11, branch_ratio=0.125)
    assert m.split_sizes == (40, 8, 8, 8)
    assert m.dwconv_w.kernel_size == (1, 11) and m.dwconv_h.kernel_size == (11, 1)
    x = torch.randn(1, 64, 9, 13)
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :40], x[:, :40])  # untouched channels
    atto = InceptionDWConv2d(40, band_kernel_size=9, branch_ratio=0.25)
    assert atto.split_sizes == (10, 10, 10, 10)


def test_pooling_mixer_excludes_padding():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = Pooling(pool_size=3)(x)
    corner = x[0, 0, :2, :2].mean() - x[0, 0, 0, 0]
    assert y[0, 0, 0, 0].item() == pytest.approx(corner.item())
    centre = x[0, 0, :3, :3].mean() - x[0, 0, 1, 1]
    assert y[0, 0, 1, 1].item() == pytest.approx(centre.item())


def test_random_mixing_is_frozen_row_stochastic_and_checks_tokens():
    m = RandomMixing(num_tokens=16)
    assert not m.random_matrix.requires_grad
    torch.testing.assert_close(m.random_matrix.sum(-1), torch.ones(16))
    x = torch.randn(2, 3, 4, 4)
    want = torch.einsum("mn,bcn->bcm", m.random_matrix, x.flatten(2)).view_as(x)
    torch.testing.assert_close(m(x), want)
    with pytest.raises(ValueError, match="16 tokens"):
        m(torch.randn(1, 3, 5, 5))


def test_attention_matches_softmax_attention():
    attn = Attention(64, head_dim=32).eval()
    x = torch.randn(2, 10, 64)
    q, k, v = attn.qkv(x).view(2, 10, 3, 2, 32).permute(2, 0, 3, 1, 4)
    w = (q @ k.transpose(-2, -1) / 32 ** 0.5).softmax(-1)
    want = attn.proj((w @ v).transpose(1, 2).reshape(2, 10, 64))
    torch.testing.assert_close(attn(x), want, rtol=1e-5, atol=1e-6)


def test_sepconv_structure():
    m = SepConv(16)
    assert m.pwconv1.out_channels == 32 and m.dwconv.groups == 32 and m.dwconv.kernel_size == (7, 7)
    assert all(c.bias is None for c in (m.pwconv1, m.dwconv, m.pwconv2))
    assert m(torch.randn(1, 16, 9, 11)).shape == (1, 16, 9, 11)


def test_squeeze_excite_gates_channels():
    se = SqueezeExcite(8, 2)
    x = torch.randn(2, 8, 5, 5)
    s = torch.sigmoid(se.fc2(F.relu(se.fc1(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * s)


# random and tvconv are sized to the stage's maps (tests below and in tests/ops/test_conv_ops.py)
@pytest.mark.parametrize("mixer", sorted(set(MIXERS) - {"random", "tvconv"}))
def test_every_mixer_plugs_into_the_metaformer_skeleton(mixer):
    model = MetaFormer(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), token_mixers=mixer, num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_random_mixer_in_skeleton_fixes_input_size():
    model = MetaFormer(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), num_classes=5,
                       token_mixers=("identity", "identity", "random", "random"),
                       mixer_kwargs=({}, {}, dict(num_tokens=16), dict(num_tokens=4)))
    assert model.traits.fixed_input_size == (64, 64)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match="only takes 64x64"):
        model(torch.randn(1, 3, 96, 64))


def test_unknown_mixer_name():
    with pytest.raises(ValueError, match="unknown token mixer 'conv'"):
        MetaFormer(token_mixers="conv")
