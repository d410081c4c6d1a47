"""count(): formulas against hand-computed values, attribution, uncounted ops, bytes, activations, speed."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._ops import OpOverloadPacket

import convscope
from convscope.analysis import count, count_params
from convscope.analysis.counting import DATA_MOVEMENT_OPS, ELEMENTWISE_COST, FORMULAS, ZERO_COST_OPS
from convscope.analysis.counting.formulas import functional, register


class Fn(nn.Module):
    """Wraps a function of the inputs so count() can run it."""

    def __init__(self, fn, *modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(modules)

    def forward(self, *xs):
        return self.fn(*self.mods, *xs)


def run(fn, *inputs, modules=(), **kw):
    return count(Fn(fn, *modules), inputs=tuple(inputs), **kw)


def only(result, op):
    recs = [r for r in result.records if r.op == op]
    assert len(recs) == 1, [r.op for r in result.records]
    return recs[0]


# -- convolution ---------------------------------------------------------------------------------------------------
def test_grouped_dilated_strided_conv():
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, groups=4, bias=True)
    x = torch.empty(2, 8, 15, 17)
    r = count(conv, inputs=x)
    rec = only(r, "aten.convolution")
    # out: H = (15 + 4 - 4 - 1) // 2 + 1 = 8, W = (17 + 4 - 4 - 1) // 2 + 1 = 9; each output takes 8/4 * 3*3 MACs
    assert rec.out_shape == (2, 12, 8, 9)
    assert rec.macs == 2 * 12 * 8 * 9 * (8 // 4) * 9 == 31104
    assert rec.flops == 2 * rec.macs
    assert rec.elementwise_flops == 2 * 12 * 8 * 9  # the bias add
    assert rec.activations == 2 * 12 * 8 * 9
    assert rec.bytes_read == 4 * (2 * 8 * 15 * 17 + 12 * 2 * 3 * 3 + 12)
    assert rec.bytes_written == 4 * 2 * 12 * 8 * 9
    assert r.uncounted == {}


def test_depthwise_conv_without_bias():
    conv = nn.Conv2d(16, 16, 7, padding=3, groups=16, bias=False)
    rec = only(count(conv, (1, 16, 10, 10)), "aten.convolution")
    assert rec.macs == 16 * 10 * 10 * 49
    assert rec.elementwise_flops == 0


def test_large_dilated_depthwise_conv():
    # UniRepLKNet-style branch: 13x13 kernel, dilation 3, 'same' padding
    conv = nn.Conv2d(32, 32, 13, padding=18, dilation=3, groups=32)
    rec = only(count(conv, (1, 32, 14, 14)), "aten.convolution")
    assert rec.out_shape == (1, 32, 14, 14)
    assert rec.macs == 32 * 14 * 14 * 169


def test_transposed_conv():
    conv = nn.ConvTranspose2d(8, 4, 3, stride=2, bias=False)
    rec = only(count(conv, (1, 8, 5, 5)), "aten.convolution")
    # every input element feeds C_out * k * k outputs
    assert rec.out_shape == (1, 4, 11, 11)
    assert rec.macs == 8 * 5 * 5 * 4 * 9


# -- matrix products -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    fc = nn.Linear(8, 6, bias=bias)
    r = count(fc, inputs=torch.empty(3, 5, 8))
    assert r.totals.macs == 3 * 5 * 8 * 6
    assert r.totals.elementwise_flops == (3 * 5 * 6 if bias else 0)
    assert r.totals.activations == 3 * 5 * 6
    assert r.by_operator["aten.addmm" if bias else "aten.mm"].macs == 720


def test_bmm_and_einsum():
    a, b = torch.empty(4, 5, 6), torch.empty(4, 6, 7)
    assert only(run(lambda x, y: torch.bmm(x, y), a, b), "aten.bmm").macs == 4 * 5 * 7 * 6
    r = run(lambda x, y: torch.einsum("bij,bjk->bik", x, y), a, b)
    assert r.totals.macs == 4 * 5 * 7 * 6 and r.uncounted == {}


def test_broadcast_operand_read_once():
    a = torch.empty(1, 5, 6)
    b = torch.empty(4, 6, 7)
    rec = only(run(lambda x, y: torch.bmm(x.expand(4, 5, 6), y), a, b), "aten.bmm")
    assert rec.bytes_read == 4 * (5 * 6 + 4 * 6 * 7)  # the expanded operand's 30 distinct elements, once


@pytest.mark.parametrize("device, dv", [("meta", 5), ("cpu", 8)])
def test_scaled_dot_product_attention(device, dv):
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, dv)
    r = run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v, device=device)
    # Q K^T: 2*3*10*12 scores of 8 MACs; A V: 2*3*10*dv outputs of 12 MACs
    assert r.totals.macs == 2 * 3 * 10 * 12 * 8 + 2 * 3 * 10 * dv * 12
    assert r.totals.activations == 2 * 3 * 10 * 12 + 2 * 3 * 10 * dv
    assert r.uncounted == {}
    if device == "cpu":  # the fused kernel; on meta the math path (bmm, softmax) is seen instead
        assert any("scaled_dot_product" in op for op in r.by_operator)
        assert r.totals.elementwise_flops == 2 * 3 * 10 * 12 * (1 + ELEMENTWISE_COST["aten._softmax"])


def test_rfft2_and_irfft2():
    x = torch.empty(2, 4, 8, 16)

    def f(x):
        y = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
        return torch.fft.irfft2(y, s=(8, 16), dim=(2, 3), norm="ortho")

    r = run(f, x)
    r2c, c2r = only(r, "aten._fft_r2c"), only(r, "aten._fft_c2r")
    # 2*4 signals of N = 8*16 = 128 points, N log2 N each
    assert r2c.macs == c2r.macs == 2 * 4 * 128 * 7
    assert r2c.out_shape == (2, 4, 8, 9)
    assert r2c.elementwise_flops == 2 * 4 * 8 * 9        # orthonormal scaling of each output
    assert r2c.bytes_written == 8 * 2 * 4 * 8 * 9        # complex64
    # HorNet's calc_flops handler reads (B, C, H, W) as (B, H, W, C): N = C * H, times W, times ceil(log2 N)
    assert r2c.fvcore_macs == 2 * (4 * 8) * 16 * 5
    assert c2r.fvcore_macs == 2 * (4 * 8) * 9 * 5       # on irfft2's complex input
    assert r.uncounted == {}


def test_resize_to_the_same_size_is_a_copy():
    x = torch.empty(1, 2, 5, 7)
    rec = only(run(lambda x: F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=True), x),
               "aten.upsample_bilinear2d")
    assert rec.elementwise_flops == rec.fvcore_macs == 0 and rec.bytes_written == 4 * 70


def test_channels_first_layer_norm_convention():
    r = count("hornet_tiny_7x7", (1, 3, 64, 64))
    ln2d = sum(x.fvcore_macs for x in r.records if x.module_type == "LayerNorm2d")
    assert ln2d > 0 and r.macs_as("fvcore_manual_cf_ln") == r.macs_as("fvcore") - ln2d
    assert r.macs_as("fvcore_manual_cf_ln") > r.macs_as("macs")  # the channels-last LayerNorms still count


# -- element-wise work ---------------------------------------------------------------------------------------------
def test_pooling():
    x = torch.empty(1, 2, 6, 6)
    avg = only(count(nn.AvgPool2d(3, 1, 1, count_include_pad=False), inputs=x), "aten.avg_pool2d")
    assert avg.elementwise_flops == 2 * 6 * 6 * 9 and avg.macs == 0
    mx = only(count(nn.MaxPool2d(3, 2, 1), inputs=x), "aten.max_pool2d_with_indices")
    assert mx.out_shape == (1, 2, 3, 3) and mx.elementwise_flops == 2 * 3 * 3 * 9
    ad = only(count(nn.AdaptiveAvgPool2d(2), inputs=x), "aten._adaptive_avg_pool2d")
    assert ad.elementwise_flops == 2 * 36 + 2 * 4


@pytest.mark.parametrize("bias, per_element", [(True, 7), (False, 6)])
def test_layer_norm(bias, per_element):
    r = count(nn.LayerNorm(8, bias=bias), inputs=torch.empty(2, 5, 8))
    rec = only(r, "aten.native_layer_norm")
    assert rec.elementwise_flops == 80 * per_element  # statistics 3, normalise 2, affine 1 per parameter
    assert rec.fvcore_macs == 80 * 5                  # fvcore: 5 with a weight
    assert rec.macs == 0


def test_batch_and_group_norm_eval_and_train():
    x = torch.empty(2, 4, 3, 3)
    bn = nn.BatchNorm2d(4)
    assert count(bn, inputs=x).totals.elementwise_flops == 72 * 4        # running statistics: 2 + affine 2
    assert count(bn, inputs=x, train=True).by_operator["aten.native_batch_norm"].elementwise_flops == 72 * 7
    assert bn.training  # the module's own mode is restored
    gn = only(count(nn.GroupNorm(2, 4, affine=False), inputs=x), "aten.native_group_norm")
    assert gn.elementwise_flops == 72 * 5 and gn.fvcore_macs == 72 * 4


@pytest.mark.parametrize("module, per_element", [
    (nn.GELU(), 5), (nn.GELU(approximate="tanh"), 9), (nn.ReLU(), 1), (nn.SiLU(), 2), (nn.Hardswish(), 4),
    (nn.Sigmoid(), 1), (nn.Tanh(), 1), (nn.Softmax(-1), 5),
])
def test_activations_cost(module, per_element):
    r = count(module, inputs=torch.empty(4, 10))
    assert r.totals.elementwise_flops == 40 * per_element and r.totals.macs == 0 and r.uncounted == {}


def test_interpolation_and_arithmetic():
    x = torch.empty(1, 2, 4, 4)
    r = run(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), x)
    assert only(r, "aten.upsample_bilinear2d").elementwise_flops == 2 * 8 * 8 * 7
    assert only(r, "aten.upsample_bilinear2d").fvcore_macs == 4 * 2 * 8 * 8
    r = run(lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), x)
    assert only(r, "aten.upsample_nearest2d").elementwise_flops == 0
    assert only(r, "aten.upsample_nearest2d").bytes_written == 4 * 2 * 8 * 8
    r = run(lambda x, y: (x + y) * x - x.sqrt() / 2, x, torch.empty(2, 1, 1))
    assert r.totals.elementwise_flops == 5 * 32 and r.uncounted == {}
    r = run(lambda x: x.mean((2, 3)), x)
    assert r.totals.elementwise_flops == 32 + 2  # sum every input, divide every output


def test_views_are_free_and_copies_move_bytes():
    x = torch.empty(2, 3, 4)
    r = run(lambda x: torch.cat([x.permute(0, 2, 1).reshape(2, 12), x.view(2, 12)], 1).contiguous(), x)
    assert r.totals.flops == r.totals.elementwise_flops == 0
    views = [rec for rec in r.records if rec.op in ("aten.permute", "aten.view", "aten._unsafe_view")]
    assert views and all(rec.bytes_read == rec.bytes_written == 0 for rec in views)
    assert r.by_operator["aten.cat"].bytes_written == 4 * 48
    assert r.uncounted == {}


# -- attribution, uncounted, sanity ----------------------------------------------------------------------------------
def test_per_module_attribution_convnext():
    r = count("convnext_tiny")
    dw = r.by_module["stages.0.blocks.0.conv_dw"]
    assert dw.macs == 96 * 56 * 56 * 49
    rec = next(x for x in r.records if x.module == "stages.0.blocks.0.conv_dw")
    assert rec.module_type == "Conv2d" and rec.op == "aten.convolution"
    # the block's own residual add and layer scale land on the block, not on a child
    assert {x.op for x in r.records if x.module == "stages.0.blocks.0"} >= {"aten.add", "aten.mul"}
    assert r.by_module_type["Conv2d"].macs == sum(v.macs for k, v in r.by_module.items()
                                                  if "conv_dw" in k or k.startswith("stem") or "downsample" in k)
    assert sum(v.macs for v in r.by_module.values()) == r.totals.macs
    assert r.params == 28_589_128
    assert r.to_dict()["totals"]["macs"] == r.totals.macs
    assert "stages.3.blocks" in r.table(top=5) and "conv_dw" in r.table(by="module", top=200)


@torch.library.custom_op("convscope_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_mystery.register_fake
def _(x):
    return torch.empty_like(x)


def test_uncounted_lists_ops_without_formula():
    r = run(lambda x: torch.ops.convscope_test.mystery(x) + torch.special.bessel_j0(x), torch.empty(3, 4))
    assert r.uncounted == {"convscope_test.mystery": 1, "aten.special_bessel_j0": 1}
    assert "convscope_test.mystery" in r.summary() and "uncounted" in r.table()
    assert r.totals.elementwise_flops == 12  # the add is still counted


@pytest.mark.parametrize("name", ["convnext_atto", "inception_next_atto", "caformer_s18", "poolformer_s12",
                                  "randformer_s12", "convnextv2_atto"])
def test_registry_models_have_no_uncounted_ops(name):
    for train in (False, True):
        assert count(name, train=train).uncounted == {}


def test_activations_are_conv_and_linear_outputs():
    """Cross-check with forward hooks on the Conv2d / Linear modules of a real CPU run."""
    torch.manual_seed(0)
    model = convscope.create_model("convnextv2_atto").eval()
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.numel())) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    r = count(model, (1, 3, 64, 64))
    assert r.totals.activations == sum(outputs)
    assert r.totals.macs == count(model, (1, 3, 64, 64), device="cpu").totals.macs


def test_bytes_follow_dtype_and_batch():
    r32 = count("convnext_atto", (1, 3, 64, 64))
    r16 = count("convnext_atto", (1, 3, 64, 64), dtype=torch.bfloat16)
    # LayerNorm's per-row mean and 1/std stay float32 in bfloat16, hence not exactly half
    assert r16.totals.bytes == pytest.approx(r32.totals.bytes / 2, rel=2e-3) and r16.totals.macs == r32.totals.macs
    assert r16.by_operator["aten.convolution"].bytes * 2 == r32.by_operator["aten.convolution"].bytes
    assert r16.dtype == "bfloat16"
    r4 = count("convnext_atto", (4, 3, 64, 64))
    assert r4.totals.macs == 4 * r32.totals.macs and r4.totals.activations == 4 * r32.totals.activations
    # each weight is read once per call whatever the batch; everything else grows with it
    weight_bytes = 4 * r32.params
    assert r4.totals.bytes - weight_bytes == 4 * (r32.totals.bytes - weight_bytes)
    t = r32.totals
    assert t.arithmetic_intensity == pytest.approx((t.flops + t.elementwise_flops) / (t.bytes_read + t.bytes_written))


def test_model_is_left_unchanged():
    model = convscope.create_model("convnext_atto")
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    model.train()
    r = count(model)
    assert r.device == "meta" and r.totals.macs > 0
    assert model.training and all(m.training for m in model.modules())
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before
    assert not any(p.is_meta for p in model.parameters())
    assert count_params(model) == r.params


def test_huge_model_on_meta_is_fast():
    count("convnext_atto", (1, 3, 32, 32))  # one-time lazy initialisation of torch's meta kernels
    # CPU time of this process, so that other jobs on a shared machine do not count (about 0.5 s here)
    start = time.process_time()
    r = count("convnextv2_huge")
    elapsed = time.process_time() - start
    assert r.params > 600e6
    assert r.macs_as("fvcore") / 1e9 == pytest.approx(115.0, abs=0.005)
    assert elapsed < 2.5, elapsed


def test_default_input_size_follows_the_card():
    assert count("inception_next_base_384").input_size == (1, 3, 384, 384)
    assert count(nn.Conv2d(3, 4, 1)).input_size == (1, 3, 224, 224)


def test_bad_arguments():
    with pytest.raises(ValueError, match="input_size"):
        count("convnext_atto", (1, 3, 0, 64))
    with pytest.raises(ValueError, match="dtype"):
        count("convnext_atto", dtype=torch.int8)
    with pytest.raises(ValueError, match="nn.Module"):
        count(42)
    with pytest.raises(ValueError, match="by="):
        count("convnext_atto").table(by="layer")
    with pytest.raises(ValueError, match="convention"):
        count("convnext_atto").macs_as("thop")
    with pytest.raises(ValueError, match="unknown model"):
        count("convnxt_tiny")


class _GlobalLocalFilter(nn.Module):
    """HorNet's GF layer: half the channels through a 3x3 depthwise conv, half through a learnable global
    filter in the Fourier domain (rfft2, complex product with a bilinearly resized weight, irfft2)."""

    def __init__(self, dim: int, h: int = 14, w: int = 8) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim // 2, dim // 2, 3, padding=1, groups=dim // 2, bias=False)
        self.complex_weight = nn.Parameter(torch.randn(dim // 2, h, w, 2) * 0.02)

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        x1 = self.dw(x1)
        B, C, a, b = x2.shape
        x2 = torch.fft.rfft2(x2.to(torch.float32), dim=(2, 3), norm="ortho")
        weight = self.complex_weight
        if weight.shape[1:3] != x2.shape[2:4]:
            weight = F.interpolate(weight.permute(3, 0, 1, 2), size=x2.shape[2:4], mode="bilinear",
                                   align_corners=True).permute(1, 2, 3, 0)
        x2 = x2 * torch.view_as_complex(weight.contiguous())
        x2 = torch.fft.irfft2(x2, s=(a, b), dim=(2, 3), norm="ortho")
        return torch.cat([x1.unsqueeze(2), x2.unsqueeze(2)], dim=2).reshape(B, 2 * C, a, b)


class _LargeKernelSEBlock(nn.Module):
    """UniRepLKNet-style: dilated re-parameterisable depthwise branches + BN, then squeeze-and-excitation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lk = nn.Conv2d(dim, dim, 13, padding=6, groups=dim, bias=False)
        self.branches = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=r * (k - 1) // 2, dilation=r, groups=dim,
                                                bias=False) for k, r in ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)))
        self.bn = nn.BatchNorm2d(dim)
        self.se = convscope.layers.SqueezeExcite(dim, dim // 4)

    def forward(self, x):
        y = self.lk(x)
        for conv in self.branches:
            y = y + conv(x)
        return self.se(self.bn(y))


def test_ops_of_upcoming_families_are_counted():
    """HorNet's Fourier global filter and UniRepLKNet's dilated large kernels with SE leave nothing uncounted."""
    r = count(nn.Sequential(_GlobalLocalFilter(16), _LargeKernelSEBlock(16)), (2, 16, 14, 14))
    assert r.uncounted == {}
    fft = r.by_operator["aten._fft_r2c"].macs
    assert fft == 2 * 8 * 196 * 8  # 2 x 8 signals of 14 x 14 points, ceil(log2 196) = 8
    assert r.by_operator["aten._fft_c2r"].macs == fft
    complex_mul = next(x for x in r.records if x.op == "aten.mul" and x.module == "0")
    assert complex_mul.elementwise_flops == 6 * 2 * 8 * 14 * 8  # (a+bi)(c+di): 4 mul + 2 add
    dw = 2 * 16 * 196 * (169 + 25 + 49 + 9 + 9 + 9)
    se = 2 * (16 * 4 + 4 * 16)
    assert r.by_module_type["Conv2d"].macs == 2 * 8 * 196 * 9 + dw + se


def test_training_pass_leaves_running_statistics_alone():
    bn = nn.BatchNorm2d(4)
    count(bn, (2, 4, 3, 3), device="cpu", train=True)
    assert bn.num_batches_tracked.item() == 0 and torch.equal(bn.running_mean, torch.zeros(4))


# -- the formula table ---------------------------------------------------------------------------------------------
def test_every_key_is_a_real_aten_op_packet():
    aten_ops = [*FORMULAS, *ZERO_COST_OPS, *DATA_MOVEMENT_OPS]
    assert len(aten_ops) == len(set(aten_ops))  # no op has a formula and a list entry, or two list entries
    for op in aten_ops:
        namespace, name = op._qualified_op_name.split("::")
        assert isinstance(op, OpOverloadPacket) and namespace == "aten" and getattr(torch.ops.aten, name) is op
    assert all(getattr(torch.ops.aten, n.removeprefix("aten.")) in FORMULAS for n in ELEMENTWISE_COST)


def test_registering_a_formula_twice_raises():
    mm, fresh = FORMULAS[torch.ops.aten.mm], torch.ops.aten.native_channel_shuffle
    assert fresh not in FORMULAS
    with pytest.raises(ValueError, match="aten.mm has a formula already"):
        register(fresh, torch.ops.aten.mm)(lambda args, kwargs, out: (0, 0))
    assert FORMULAS[torch.ops.aten.mm] is mm and fresh not in FORMULAS


def test_in_place_ops_follow_their_functional_op():
    aten = torch.ops.aten
    assert functional(aten.relu_) is aten.relu and functional(aten.add_) is aten.add
    assert functional(aten.copy_) is aten.copy_ and functional(aten.detach_) is aten.detach_  # listed themselves
    assert functional(aten.kthvalue) is aten.kthvalue  # unknown, not in-place: itself
    r = run(lambda x: x.clone().add_(1).relu_(), torch.empty(2, 3))
    assert r.uncounted == {} and r.by_operator["aten.add_"].elementwise_flops == 6
    assert r.by_operator["aten.relu_"].elementwise_flops == 6
