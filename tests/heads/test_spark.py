"""SparK: each sparse operator against a submanifold reference computed on the active sites alone, masked
positions exactly zero through every block of every served family, the loss over masked patches only, and the
encoder's weights loading into `create_model`."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from convscope.heads.spark import (
    SPARK_SERVED,
    SPARK_UNSUPPORTED,
    SparK,
    SparseMask,
    spark_families,
    spark_loss,
    spark_smallest,
    sparsify,
)
from convscope.layers import GlobalResponseNorm, GroupNorm1, LayerNorm, LayerNorm2d, SqueezeExcite
from convscope.layers.mixers import Attention
from convscope.models import create_model, family_of, list_families, model_arch

from ..conftest import randomize_

B, C, H, W = 2, 4, 8, 8
# the deepest map: 2x2 per sample, upsampled by 4 to the 8x8 test map; sample 1 keeps one position only
ACTIVE = torch.tensor([[[[True, False], [False, True]]], [[[False, False], [True, False]]]])


def _sparse(module: nn.Module) -> tuple[nn.Module, SparseMask]:
    """`module` inside a container, made sparse, with ACTIVE set."""
    holder = nn.Sequential(module)
    mask = sparsify(holder)
    mask.set(ACTIVE)
    return holder, mask


def _input(channels: int = C, size: int = H) -> torch.Tensor:
    """Random values everywhere, masked positions included: the operators must not read them."""
    return torch.randn(B, channels, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _active_at(size: int) -> torch.Tensor:
    return ACTIVE.repeat_interleave(size // 2, 2).repeat_interleave(size // 2, 3)[:, 0]  # (B, size, size)


def _neighbours(conv_like: nn.Module, oy: int, ox: int, size: int):
    """The in-bounds (ky, kx, iy, ix) of output (oy, ox)'s window."""
    kh, kw = _pair(conv_like.kernel_size)
    sh, sw = _pair(conv_like.stride)
    ph, pw = _pair(conv_like.padding)
    dh, dw = _pair(getattr(conv_like, "dilation", 1))
    for ky, kx in itertools.product(range(kh), range(kw)):
        iy, ix = oy * sh - ph + ky * dh, ox * sw - pw + kx * dw
        if 0 <= iy < size and 0 <= ix < size:
            yield ky, kx, iy, ix


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _reference_conv(conv: nn.Conv2d, x: torch.Tensor, out_size: int) -> torch.Tensor:
    """Submanifold conv: for each active output site, the sum over its ACTIVE input neighbours only, gathered
    one by one; masked output sites are zero."""
    act_in, act_out = _active_at(x.shape[-1]), _active_at(out_size)
    g, w = conv.groups, conv.weight
    out = torch.zeros(B, conv.out_channels, out_size, out_size, dtype=x.dtype)
    wg = w.view(g, conv.out_channels // g, *w.shape[1:])
    for b, oy, ox in itertools.product(range(B), range(out_size), range(out_size)):
        if not act_out[b, oy, ox]:
            continue
        acc = conv.bias.clone() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=x.dtype)
        for ky, kx, iy, ix in _neighbours(conv, oy, ox, x.shape[-1]):
            if act_in[b, iy, ix]:
                xin = x[b, :, iy, ix].view(g, -1)  # (groups, in per group)
                acc = acc + torch.einsum("goi,gi->go", wg[:, :, :, ky, kx], xin).reshape(-1)
        out[b, :, oy, ox] = acc
    return out


@pytest.mark.parametrize("conv", [
    nn.Conv2d(C, 6, 3, padding=1),  # dense k3
    nn.Conv2d(C, C, 7, padding=3, groups=C),  # depthwise k7, stride 1
    nn.Conv2d(C, 6, 2, stride=2),  # a 2x2/2 downsampling conv
    nn.Conv2d(C, 6, 3, stride=2, padding=1),  # an overlapping strided conv (UniRepLKNet's stem)
    nn.Conv2d(C, C, (1, 5), padding=(0, 2), groups=C),  # InceptionNeXt's band kernel
], ids=["k3", "dw7", "k2s2", "k3s2", "band1x5"])
def test_sparse_conv_equals_the_submanifold_conv_on_active_sites(conv):
    conv = conv.double()
    x = _input()
    holder, _ = _sparse(conv)
    y = holder(x)
    ref = _reference_conv(conv, x, y.shape[-1])
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    assert (y.permute(1, 0, 2, 3)[:, ~_active_at(y.shape[-1])] == 0).all()


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                  nn.AvgPool2d(3, 1, 1), nn.MaxPool2d(2, 2)], ids=["max3", "avg3", "avg3pad", "max2s2"])
def test_sparse_pool_equals_the_pool_over_active_neighbours(pool):
    x = _input()
    holder, _ = _sparse(pool)
    y = holder(x)
    act_in, act_out = _active_at(H), _active_at(y.shape[-1])
    ref = torch.zeros_like(y)
    for b, oy, ox in itertools.product(range(B), range(y.shape[-2]), range(y.shape[-1])):
        if act_out[b, oy, ox]:
            vals = torch.stack([x[b, :, iy, ix] for _, _, iy, ix in _neighbours(pool, oy, ox, H) if act_in[b, iy, ix]])
            ref[b, :, oy, ox] = vals.amax(0) if isinstance(pool, nn.MaxPool2d) else vals.mean(0)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def _visible(x: torch.Tensor) -> torch.Tensor:
    """The (N_visible, C) rows of an NCHW map, gathered by hand."""
    act = _active_at(x.shape[-1])
    return torch.stack([x[b, :, i, j] for b, i, j in itertools.product(range(B), range(H), range(W)) if act[b, i, j]])


def _scatter(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out, act, k = torch.zeros_like(like), _active_at(like.shape[-1]), 0
    for b, i, j in itertools.product(range(B), range(H), range(W)):
        if act[b, i, j]:
            out[b, :, i, j], k = rows[k], k + 1
    return out


def _affine(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
        norm.bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(2))
    return norm


def test_sparse_batchnorm_normalises_over_visible_positions_and_updates_running_stats_from_them():
    bn = _affine(nn.BatchNorm2d(C, momentum=0.5)).double()
    x = _input()
    holder, _ = _sparse(bn)
    y = holder(x)
    rows = _visible(x)
    mean, var = rows.mean(0), rows.var(0, unbiased=False)
    ref = _scatter((rows - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias, x)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_mean, 0.5 * mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, 0.5 + 0.5 * rows.var(0, unbiased=True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True], ids=["channels_first", "channels_last"])
def test_sparse_layernorm_normalises_each_visible_position_and_zeroes_masked_ones(channels_last):
    ln = _affine(LayerNorm(C) if channels_last else LayerNorm2d(C)).double()
    x = _input()
    holder, _ = _sparse(ln)
    y = holder(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if channels_last else holder(x)
    rows = _visible(x)
    mean, var = rows.mean(1, keepdim=True), rows.var(1, unbiased=False, keepdim=True)
    ref = _scatter((rows - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias, x)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_sparse_groupnorm_statistics_span_the_visible_positions_of_each_sample_only():
    gn = _affine(GroupNorm1(C)).double()
    x = _input()
    holder, _ = _sparse(gn)
    y = holder(x)
    act, ref = _active_at(H), torch.zeros_like(x)
    for b in range(B):
        vals = x[b][:, act[b]]  # (C, N_visible of sample b)
        normed = (vals - vals.mean()) / torch.sqrt(vals.var(unbiased=False) + gn.eps)
        ref[b][:, act[b]] = normed * gn.weight[:, None] + gn.bias[:, None]
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_sparse_grn_takes_its_global_norms_over_visible_positions():
    grn = _affine(GlobalResponseNorm(C, channels_last=True)).double()
    x = _input()
    holder, _ = _sparse(grn)
    y = holder(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    act, ref = _active_at(H), torch.zeros_like(x)
    for b in range(B):
        vals = x[b][:, act[b]]
        gx = vals.square().sum(1).sqrt()
        nx = gx / (gx.mean() + grn.eps)
        ref[b][:, act[b]] = vals + grn.weight[:, None] * (vals * nx[:, None]) + grn.bias[:, None]
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_sparse_squeeze_excite_squeezes_over_visible_positions():
    se = SqueezeExcite(C, 2).double()
    x = _input()
    holder, _ = _sparse(se)
    y = holder(x)
    act, ref = _active_at(H), torch.zeros_like(x)
    for b in range(B):
        vals = x[b][:, act[b]]
        s = vals.mean(1).view(1, C, 1, 1)
        ref[b][:, act[b]] = vals * se.gate(se.fc2(se.act(se.fc1(s)))).view(C, 1)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_sparsify_refuses_attention_and_keeps_working_densely_without_a_mask():
    with pytest.raises(ValueError, match="self-attention"):
        sparsify(nn.Sequential(Attention(32)))
    conv = nn.Conv2d(C, C, 3, padding=1).double()
    holder, mask = _sparse(conv)
    mask.set(None)
    x = _input()
    assert torch.equal(holder(x), conv(x))


# -- the loss -----------------------------------------------------------------------------------------------------
def test_loss_ignores_visible_patches_and_reads_masked_ones():
    g = torch.Generator().manual_seed(3)
    images, prediction = torch.randn(B, 3, 64, 64, generator=g), torch.randn(B, 3, 64, 64, generator=g)
    active = ACTIVE  # patch 32: sample 0 masks patches (0, 1) and (1, 0)
    loss = spark_loss(prediction, images, active, 32)
    changed_images, changed_pred = images.clone(), prediction.clone()
    changed_images[0, :, :32, :32] += 5.0  # visible patch (0, 0) of sample 0
    changed_pred[1, :, 32:, :32] = 0.0  # visible patch (1, 0) of sample 1
    assert torch.equal(spark_loss(changed_pred, changed_images, active, 32), loss)
    changed_pred[0, :, :32, 32:] += 1.0  # masked patch (0, 1) of sample 0
    assert spark_loss(changed_pred, images, active, 32) != loss


def test_loss_is_the_mse_to_the_patch_normalised_target_on_masked_patches():
    g = torch.Generator().manual_seed(4)
    images = torch.randn(1, 3, 64, 64, generator=g, dtype=torch.float64)
    active = torch.tensor([[[[True, True], [True, False]]]])  # only patch (1, 1) is masked
    patch = images[0, :, 32:, 32:]
    target = (patch - patch.mean()) / torch.sqrt(patch.var() + 1e-6)
    prediction = torch.zeros_like(images)
    torch.testing.assert_close(spark_loss(prediction, images, active, 32), target.square().mean())


# -- the zoo ------------------------------------------------------------------------------------------------------
def test_every_family_is_served_or_has_a_reason_and_unserved_ones_raise_it():
    served = set(spark_families())
    assert served == set(SPARK_SERVED)
    for family in list_families():
        assert family in served or family in SPARK_UNSUPPORTED, family
    assert spark_families()["hornet"] and not any(model_arch(n).get("gf_sizes", (None,))[-1]
                                                  for n in spark_families()["hornet"])
    with pytest.raises(ValueError, match="softmax"):
        SparK("caformer_s18", input_size=64)
    with pytest.raises(ValueError, match="FFT"):
        SparK("hornet_tiny_gf", input_size=64)
    with pytest.raises(ValueError, match="does not serve family"):
        spark_smallest("lsnet")


def _shallow(name: str) -> dict:
    """One block per stage (every block and stage kind stays), as the export test builds them."""
    spec, arch = family_of(name).spec, model_arch(name)
    depths, widths = spec.stages(arch)
    return spec.rebuild(arch, [1] * len(depths), widths)


@pytest.mark.parametrize("family", SPARK_SERVED)
def test_served_family_keeps_masked_positions_zero_trains_and_loads_back(family):
    name = spark_smallest(family)
    torch.manual_seed(0)
    spark = SparK(name, input_size=64, **_shallow(name))
    encoder = randomize_(spark.encoder).model  # biases and layer scales far from zero, so a leak would show
    maps: list[tuple[str, torch.Tensor]] = []
    blocks = [("stem", encoder.stem)] + [
        (f"stages.{i}.{part}", m) for i, stage in enumerate(encoder.stages)
        for part, m in ([("downsample", stage.downsample)] if stage.downsample is not None else [])
        + [(f"blocks.{j}", blk) for j, blk in enumerate(stage.blocks)]]
    for label, m in blocks:
        m.register_forward_hook(lambda mod, inp, out, label=label: maps.append((label, out)))
    images = torch.randn(B, 3, 64, 64)
    loss = spark(images, ACTIVE)
    assert len(maps) == len(blocks)
    for label, out in maps:
        masked = ~ACTIVE.repeat_interleave(out.shape[-2] // 2, 2).repeat_interleave(out.shape[-1] // 2, 3)
        assert (out * masked == 0).all() and (out.masked_select(masked) == 0).all(), label
        assert out.masked_select(~masked).abs().sum() > 0, label
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    with torch.no_grad():  # the prediction reads visible pixels only: new values at masked ones change nothing
        pixels = ACTIVE.repeat_interleave(32, 2).repeat_interleave(32, 3)
        other = torch.where(pixels, images, torch.randn(B, 3, 64, 64))
        assert torch.equal(spark._predict(other, ACTIVE)[0], spark._predict(images, ACTIVE)[0])
    stem_grads = [p.grad for p in encoder.stem.parameters()]
    assert stem_grads and all(g is not None and torch.isfinite(g).all() for g in stem_grads)
    assert any(g.abs().sum() > 0 for g in stem_grads)
    dense = create_model(name, **_shallow(name))
    state = spark.encoder_state_dict()
    result = dense.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert [k for k in result.missing_keys if not k.startswith("head.")] == []
    loaded = dense.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize(("family", "kind"), [("convnext", "ln"), ("inception_next", "bn"), ("replknet", "bn")])
def test_densify_norm_is_the_encoders_own_kind(family, kind):
    """The official code densifies ConvNeXt's maps with LayerNorm and ResNet's with BatchNorm; an encoder with
    BatchNorm (InceptionNeXt, RepLKNet) gets sparse BatchNorm, one without gets LayerNorm, which leaves masked
    positions for the mask token."""
    name = spark_smallest(family)
    spark = SparK(name, input_size=64, **_shallow(name))
    dense = {type(n.dense) for n in spark.densify_norms}
    assert spark.densify_norm == kind and dense == ({nn.BatchNorm2d} if kind == "bn" else {LayerNorm2d})
    images, active = torch.randn(B, 3, 64, 64), ACTIVE
    spark.train()(images, active).backward()
    assert all(p.grad is not None for p in spark.densify_norms.parameters())


def test_reconstruct_pastes_visible_patches_and_checks_its_inputs():
    torch.manual_seed(0)
    spark = SparK("convnext_atto", input_size=64, depths=(1, 1, 1, 1)).eval()
    images = torch.randn(B, 3, 64, 64)
    masked, rec, pixels = spark.reconstruct(images, ACTIVE)
    assert pixels.shape == (B, 1, 64, 64) and torch.equal(pixels[:, :, ::32, ::32], ACTIVE)
    assert torch.equal(masked, images * pixels)
    assert torch.equal(rec[pixels.expand_as(rec)], images[pixels.expand_as(images)])
    assert not torch.equal(rec, images)
    active = spark.random_active(3, generator=torch.Generator().manual_seed(0))
    assert active.dtype == torch.bool and active.shape == (3, 1, 2, 2) and active.flatten(1).sum(1).tolist() == [2] * 3
    assert spark.downsample_ratio == 32 and spark.input_size == (64, 64)
    with pytest.raises(ValueError, match=r"images of shape \(B, 3, 64, 64\)"):
        spark(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="bool"):
        spark(images, ACTIVE.float())
    with pytest.raises(ValueError, match="multiple of convnext_atto's deepest stride 32"):
        SparK("convnext_atto", input_size=48, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="mask_ratio"):
        SparK("convnext_atto", mask_ratio=1.0)


def test_gradient_checkpointing_recomputes_with_the_same_mask():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        spark = SparK("convnext_atto", input_size=64, depths=(1, 1, 1, 1)).double()
        randomize_(spark.encoder)
        spark.encoder.set_grad_checkpointing(checkpointing)
        spark(torch.randn(B, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64),
              ACTIVE).backward()
        grads.append(spark.encoder.model.stem[0].dense.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
