"""gnConv and the global-local filter (HorNet, arXiv 2207.14284) against the paper's equations, and the HorNet
variants' filter sizes against their cards."""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

import convscope
from convscope.layers import GlobalLocalFilter, GnConv
from convscope.models.hornet import HorNetBlock
from convscope.models.metaformer import MetaFormer

from ..conftest import randomize_


def _layer_norm_cf(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)


def _paper_gnconv(m: GnConv, x: torch.Tensor, f=None) -> torch.Tensor:
    """Sec. 3.1: [p_0, q_0..q_{n-1}] = phi_in(x); p_{k+1} = f_k(q_k) * g_k(p_k) / alpha (g_0 the identity);
    y = phi_out(p_n), with C_k = C / 2^(n-1-k) and alpha = 3. f_k is the depthwise 7x7 conv of q_k's channels
    (or, for a filter that is not per-channel, `f` applied to all the q's together)."""
    C, n = x.shape[1], m.order
    Cs = [C // 2 ** (n - 1 - k) for k in range(n)]
    y = F.conv2d(x, m.proj_in.weight, m.proj_in.bias)
    p, q = y[:, :Cs[0]], y[:, Cs[0]:]
    fq = f(q) if f is not None else None
    start = 0
    for k in range(n):
        if f is None:
            w, b = m.dwconv.weight[start:start + Cs[k]], m.dwconv.bias[start:start + Cs[k]]
            f_k = F.conv2d(q[:, start:start + Cs[k]], w, b, padding=3, groups=Cs[k])
        else:
            f_k = fq[:, start:start + Cs[k]]
        g_k = p if k == 0 else F.conv2d(p, m.pws[k - 1].weight, m.pws[k - 1].bias)
        p = f_k * g_k / 3
        start += Cs[k]
    return F.conv2d(p, m.proj_out.weight, m.proj_out.bias)


@pytest.mark.parametrize("order", [2, 3])
def test_gnconv_follows_the_paper_recursion(order):
    m = randomize_(GnConv(16, order=order)).double()
    assert m.dims == tuple(16 // 2 ** (order - 1 - k) for k in range(order))
    assert m.proj_in.out_channels == 32 and m.dwconv.in_channels == sum(m.dims) == 32 - m.dims[0]
    assert m.dwconv.kernel_size == (7, 7) and m.dwconv.bias is not None
    assert [(g.in_channels, g.out_channels) for g in m.pws] == list(zip(m.dims, m.dims[1:], strict=False))
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(m(x), _paper_gnconv(m, x), rtol=1e-12, atol=1e-12)


def test_gnconv_with_the_global_filter():
    m = randomize_(GnConv(32, order=3, spatial_mixer=partial(GlobalLocalFilter, h=6, w=4))).double()
    assert isinstance(m.dwconv, GlobalLocalFilter) and m.dwconv.complex_weight.shape == (28, 6, 4, 2)
    x = torch.randn(2, 32, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), _paper_gnconv(m, x, f=m.dwconv), rtol=1e-12, atol=1e-12)


def test_gnconv_rejects_channels_it_cannot_halve():
    with pytest.raises(ValueError, match="divisible by 2\\^\\(order-1\\) = 8; got dim=20"):
        GnConv(20, order=4)


def _bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) linear interpolation with the corners aligned: output i samples input i*(n_in-1)/(n_out-1)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        i0 = min(int(src), n_in - 1)
        i1, t = min(i0 + 1, n_in - 1), src - i0
        m[i, i0] += 1 - t
        m[i, i1] += t
    return m


def _resized(weight: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The (C, h', w', 2) filter resized to (C, h, w, 2), separably."""
    mh, mw = _bilinear_matrix(weight.shape[1], h), _bilinear_matrix(weight.shape[2], w)
    return torch.einsum("Hh,chwr,Ww->cHWr", mh, weight.double(), mw).to(weight.dtype)


def _reference_filter(m: GlobalLocalFilter, x: torch.Tensor) -> torch.Tensor:
    """pre-LN; local half -> dw 3x3; global half -> irfft2(rfft2 * resized W); interleave; post-LN."""
    B, C, H, W = x.shape
    z = _layer_norm_cf(x, m.pre_norm)
    local = F.conv2d(z[:, :C // 2], m.dw.weight, padding=1, groups=C // 2)
    weight = _resized(m.complex_weight, H, W // 2 + 1)
    spectrum = torch.fft.rfft2(z[:, C // 2:], norm="ortho") * torch.complex(weight[..., 0], weight[..., 1])
    glob = torch.fft.irfft2(spectrum, s=(H, W), norm="ortho")
    mixed = torch.empty_like(z)
    mixed[:, 0::2], mixed[:, 1::2] = local, glob
    return _layer_norm_cf(mixed, m.post_norm)


@pytest.mark.parametrize("size", [(6, 10), (9, 7), (4, 4)])  # spectra (6, 6) = built size, (9, 4), (4, 3)
def test_global_local_filter_matches_reference(size):
    m = randomize_(GlobalLocalFilter(16, h=6, w=6)).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference_filter(m, x), rtol=1e-12, atol=1e-12)


def test_filter_used_at_another_size_equals_explicitly_resized_weight():
    built_for = randomize_(GlobalLocalFilter(24, h=14, w=8))
    resized = GlobalLocalFilter(24, h=10, w=7)  # the spectrum of a 10x12 map
    state = dict(built_for.state_dict(), complex_weight=_resized(built_for.complex_weight.detach(), 10, 7))
    resized.load_state_dict(state)
    x = torch.randn(2, 24, 10, 12)
    torch.testing.assert_close(built_for(x), resized(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(built_for(x), GlobalLocalFilter(24, h=10, w=7)(x), atol=1e-2)


def test_filter_at_its_built_size_uses_the_weight_unchanged():
    m = randomize_(GlobalLocalFilter(16, h=7, w=4))
    z = torch.randn(2, 8, 7, 7)
    want = torch.fft.irfft2(torch.fft.rfft2(z, norm="ortho") * torch.view_as_complex(m.complex_weight),
                            s=(7, 7), norm="ortho")
    torch.testing.assert_close(m.global_filter(z), want, rtol=0, atol=0)


def test_filter_interleaves_local_and_global_channels():
    """With a zero local kernel and an all-pass global filter, channel 2k is 0 and channel 2k+1 is the k-th
    channel of the second half, as `cat([x1.unsqueeze(2), x2.unsqueeze(2)], 2).reshape(B, 2C, H, W)` orders
    them in the official code."""
    m = randomize_(GlobalLocalFilter(8, h=5, w=3))
    with torch.no_grad():
        m.dw.weight.zero_()
        m.complex_weight.copy_(torch.tensor([1.0, 0.0]))
    x = torch.randn(1, 8, 5, 6)  # another size: a constant filter stays all-pass when resized
    z = _layer_norm_cf(x, m.pre_norm)
    mixed = torch.stack([torch.zeros_like(z[:, 4:]), z[:, 4:]], dim=2).reshape(1, 8, 5, 6)
    assert torch.equal(mixed[:, 3], z[:, 5])
    torch.testing.assert_close(m(x), _layer_norm_cf(mixed, m.post_norm), rtol=1e-5, atol=1e-5)


def test_filter_ffts_in_float32_at_least():
    m = randomize_(GlobalLocalFilter(16, h=6, w=4)).eval()
    x = torch.randn(2, 16, 6, 6)
    want = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the local half runs in bf16, the FFT in float32
        got = m(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    bf16 = randomize_(GlobalLocalFilter(16, h=6, w=4)).to(torch.bfloat16)  # a bf16 weight cannot be complex
    assert bf16(x.bfloat16()).dtype == torch.bfloat16
    assert m.double()(x.double()).dtype == torch.float64


def test_hornet_block_formula():
    blk = randomize_(HorNetBlock(16, order=2)).double()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    y = x + blk.gamma1.view(-1, 1, 1) * blk.gnconv(_layer_norm_cf(x, blk.norm1))
    t = F.layer_norm(y.permute(0, 2, 3, 1), (16,), blk.norm2.weight, blk.norm2.bias, 1e-6)
    t = F.linear(F.gelu(F.linear(t, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    torch.testing.assert_close(blk(x), y + (blk.gamma2 * t).permute(0, 3, 1, 2), rtol=1e-12, atol=1e-12)


GF_MODELS = [n for n in convscope.list_models("hornet*") if "_gf" in n]


@pytest.mark.parametrize("name", GF_MODELS)
def test_gf_filters_are_built_for_the_card_input_size(name):
    card = convscope.model_card(name)
    with torch.device("meta"):
        model = convscope.create_model(name)
    orders = [stage.blocks[0].gnconv.order for stage in model.stages]
    assert orders == [2, 3, 4, 5]
    sizes = []
    for info, stage in zip(model.feature_info, model.stages, strict=False):
        side = card.input_size[1] // info["reduction"]
        for blk in stage.blocks:
            if isinstance(blk.gnconv.dwconv, GlobalLocalFilter):
                assert blk.gnconv.dwconv.complex_weight.shape[1:3] == (side, side // 2 + 1)
                sizes.append(side)
    assert sorted(set(sizes)) == sorted({card.input_size[1] // 16, card.input_size[1] // 32}), sizes


def test_gf_model_runs_on_the_meta_device_at_any_size():
    with torch.device("meta"):
        model = convscope.create_model("hornet_large_gf_img384")  # the official name is an alias
        assert model.model_name == "hornet_large_gf_384"
        assert model(torch.empty(1, 3, 224, 320)).shape == (1, 1000)  # filters built for 384x384


def test_gnconv_orders_per_stage_in_the_metaformer_skeleton():
    model = MetaFormer(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), token_mixers="gnconv", num_classes=5,
                       mixer_kwargs=[dict(order=k) for k in (2, 3, 4, 5)])
    assert [s.blocks[0].token_mixer.order for s in model.stages] == [2, 3, 4, 5]
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 5)
