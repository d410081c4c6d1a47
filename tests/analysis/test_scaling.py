"""Scaling rules of "Fast and Accurate Model Scaling" (Dollar et al., arXiv 2103.06877)."""
from __future__ import annotations

import math

import pytest
import torch

from convscope.analysis import activation_exponent, count, scale, scaling_exponents, scaling_factors
from convscope.analysis.scaling import RULES
from convscope.models import family_of, list_families, list_models, model_arch, model_card


def test_factors_follow_pycls():
    # pycls scaling_factors("d1_w8_g8_r1", s): d = s^0.1, w = s^0.4, r = s^0.05
    d, w, r = scaling_factors("dWr", 4.0)
    assert (d, w, r) == pytest.approx((4 ** 0.1, 4 ** 0.4, 4 ** 0.05))
    assert scaling_factors("d1_w8_r1", 4.0) == pytest.approx((d, w, r))
    assert scaling_factors("dwr", 8.0) == pytest.approx((2.0, 2 ** 0.5, 2 ** 0.5))
    for rule in ("d", "w", "r", "dw", "dwr", "dWr", "d2_w3_r1"):
        d, w, r = scaling_factors(rule, 3.0)
        assert d * w * w * r * r == pytest.approx(3.0)
    # the paper's activation asymptotics: ~s for d and r, ~sqrt(s) for w, s^(1 - alpha/2) for dWr
    assert [activation_exponent(r) for r in ("d", "r", "w", "dwr", "dWr")] == pytest.approx([1, 1, 0.5, 5 / 6, 0.6])
    assert activation_exponent("dWr", alpha=1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="scaling rule"):
        scaling_exponents("depth")
    with pytest.raises(ValueError, match="alpha"):
        scaling_exponents("dWr", alpha=1.5)
    with pytest.raises(ValueError, match="positive"):
        scaling_factors("w", 0)


def test_convnext_tiny_x4():
    """Each rule at 4x on convnext_tiny: a buildable config, counted; activations against the asymptotics."""
    convnext_x4 = {rule: scale("convnext_tiny", 4.0, rule) for rule in ("d", "w", "r", "dwr", "dWr")}
    fast = convnext_x4["dWr"]
    # pycls rounding: depth round(d * n), resolution multiples of 4; widths multiples of 8, which pycls rounds to
    # (168, 336, 672, 1336) for x3.58 MACs: the width is corrected on the counted MACs instead
    assert fast.depths == (3, 3, 10, 3) and fast.input_size == (3, 240, 240)
    assert all(c % 8 == 0 for c in fast.widths) and fast.widths[0] > 168
    assert fast.kwargs == dict(depths=fast.depths, dims=fast.widths)
    assert any("corrected" in n for n in fast.notes) and fast.achieved_multiplier == pytest.approx(4.0, rel=0.05)
    with torch.device("meta"):
        model = fast.build()
    r = count(model, (1, *fast.input_size))
    assert (r.totals.macs, r.totals.activations, r.params) == (fast.macs, fast.activations, fast.params)
    assert fast.base_macs == count("convnext_tiny").totals.macs
    # the achieved multiplier is reported as counted
    assert fast.achieved_multiplier == pytest.approx(fast.macs / fast.base_macs)
    for cfg in convnext_x4.values():
        assert cfg.achieved_multiplier == pytest.approx(4.0, rel=0.05), (cfg.rule, cfg.achieved_multiplier)
    assert convnext_x4["r"].kwargs == convnext_x4["r"].base_kwargs and convnext_x4["r"].input_size == (3, 448, 448)
    assert convnext_x4["w"].kwargs["dims"] == (192, 384, 768, 1536)
    assert convnext_x4["d"].kwargs["depths"] == (12, 12, 36, 12)

    acts = {rule: cfg.activations_multiplier for rule, cfg in convnext_x4.items()}
    # measured growth exponent log(acts x) / log(MACs x) against the paper's asymptotics
    for rule, cfg in convnext_x4.items():
        measured = math.log(cfg.activations_multiplier) / math.log(cfg.achieved_multiplier)
        assert measured == pytest.approx(activation_exponent(rule), abs=0.06), (rule, measured)
    assert acts["dWr"] < 0.56 * acts["d"] and acts["dWr"] < 0.56 * acts["r"]
    assert acts["w"] < acts["dWr"] < acts["dwr"] < acts["r"]


def test_family_width_constraints():
    ca = scale("caformer_s18", 2.0, "w")
    dims = ca.kwargs["dims"]
    assert all(c % 8 == 0 for c in dims) and dims[2] % 32 == 0 and dims[3] % 32 == 0  # attention: whole heads
    inc = scale("inception_next_tiny", 2.0, "dWr")
    with torch.device("meta"):
        model = inc.build()
    for stage, dim in zip(model.stages, inc.kwargs["dims"], strict=False):
        mixer = stage.blocks[0].token_mixer
        assert mixer.dwconv_hw.in_channels * 8 == dim  # the 1/8 branch ratio stays exact
    # RandFormer's random matrices follow the token count, and its input stays a multiple of 32
    rand = scale("randformer_s12", 2.0, "r")
    h, w = rand.input_size[1:]
    assert h % 32 == 0 and w % 32 == 0 and h > 224
    assert rand.kwargs["mixer_kwargs"][2:] == (dict(num_tokens=(h // 16) ** 2), dict(num_tokens=(h // 32) ** 2))
    model = rand.build(num_classes=3).eval()
    assert model(torch.randn(1, 3, h, w)).shape == (1, 3)
    assert scale("randformer_s12", 2.0, "dw").input_size == (3, 224, 224)
    # HorNet's global filters are rebuilt for the new input size, as the official 384 model is
    gf = scale("hornet_tiny_gf", 2.0, "r")
    side = gf.input_size[1]
    assert gf.kwargs["gf_sizes"] == (None, None, (side // 16, side // 32 + 1), (side // 32, side // 64 + 1))


# Every family with each single dimension and the default rule shrinking (at its smallest variant); every rule on
# four families whose specs differ (plain conv; ConViT's one tied width and 16-pixel input multiple; RandFormer's
# 32-pixel steps and per-size token counts; HorNet's global filters rebuilt per size); every variant with the
# default rule. The achieved MACs multiplier is within 10% of the target and the configuration builds. The
# combined rules only mix the single ones' factors, so every family need not see them all.
RULES_ALL = tuple(RULES) + ("d1_w8_r1",)
SMALLEST = {fam: min(list_models(family=fam), key=lambda n: model_card(n).params_m) for fam in list_families()}
EVERY_RULE_FAMILIES = ("convnext", "convit", "randformer", "hornet")


def _check(cfg, target):
    assert cfg.achieved_multiplier == pytest.approx(target, rel=0.10), (cfg.model_name, cfg.rule, cfg.summary())
    spec = family_of(cfg.model_name).spec
    arch = {**model_arch(cfg.model_name), **cfg.kwargs}
    assert all(wd % q == 0 for wd, q in zip(cfg.widths, spec.quanta(arch), strict=False)), cfg.summary()
    with torch.device("meta"):
        model = cfg.build()
    assert [f["num_chs"] for f in model.feature_info] == list(cfg.widths)


@pytest.mark.parametrize("family", sorted(SMALLEST))
def test_scale_every_family_each_dimension(family):
    for rule in ("d", "w", "r"):
        _check(scale(SMALLEST[family], 2.0, rule), 2.0)
    _check(scale(SMALLEST[family], 0.5, "dWr"), 0.5)


@pytest.mark.parametrize("family", EVERY_RULE_FAMILIES)
def test_scale_every_rule(family):
    for rule in RULES_ALL:
        _check(scale(SMALLEST[family], 2.0, rule), 2.0)


@pytest.mark.parametrize("name", list_models())
def test_scale_every_variant(name):
    _check(scale(name, 2.0, "dWr"), 2.0)


def test_scale_reaches_the_families_that_used_to_fail():
    # RepLKNet's own argument names, UniRepLKNet's per-block kernel sizes, gnConv's multiples of 16
    assert scale("replknet_31b", 2.0, rule="w").kwargs.keys() == {"layers", "channels"}
    uni = scale("unireplknet_a", 2.0, rule="d")
    assert [len(k) for k in uni.kwargs["kernel_sizes"]] == list(uni.depths)
    assert uni.kwargs["kernel_sizes"][0][0] == 3 and uni.kwargs["kernel_sizes"][2][0] == 13
    hor = scale("hornet_base_7x7", 2.0, rule="w")
    assert hor.widths[3] % 16 == 0 and hor.widths[2] % 8 == 0
    with pytest.raises(ValueError, match="tolerance"):
        scale("convnext_atto", 2.0, tolerance=0)


def test_width_scaling_reaches_the_target_past_whole_heads():
    # The bench's attention stages hold 32-channel heads and stage 1 only one: every uniform width factor gives it
    # one head (MACs x1.70 at most) or two (x2.46), nothing between; widths are then refined one head at a time.
    cfg = scale("mixer_bench_attention", 2.0, "w")
    _check(cfg, 2.0)
    assert cfg.achieved_multiplier == pytest.approx(2.0, rel=0.05), cfg.summary()
    assert any(n.startswith("widths refined per stage") for n in cfg.notes), cfg.notes
    assert all(w % 32 == 0 for w in cfg.widths)
