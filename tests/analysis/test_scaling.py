"""Scaling rules of "Fast and Accurate Model Scaling" (Dollar et al., arXiv 2103.06877)."""
from __future__ import annotations

import math

import pytest
import torch

from convscope.analysis import activation_exponent, count, scale, scaling_exponents, scaling_factors


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
    # pycls rounding: depth round(d * n), width multiples of 8, resolution multiples of 4
    assert fast.kwargs == dict(depths=(3, 3, 10, 3), dims=(168, 336, 672, 1336))
    assert fast.input_size == (3, 240, 240)
    with torch.device("meta"):
        model = fast.build()
    r = count(model, (1, *fast.input_size))
    assert (r.totals.macs, r.totals.activations, r.params) == (fast.macs, fast.activations, fast.params)
    assert fast.base_macs == count("convnext_tiny").totals.macs
    # the achieved multiplier is reported as counted: depth rounding (9 -> 10 instead of 10.3) costs some
    assert fast.achieved_multiplier == pytest.approx(fast.macs / fast.base_macs)
    for cfg in convnext_x4.values():
        assert 3.4 < cfg.achieved_multiplier < 4.2, (cfg.rule, cfg.achieved_multiplier)
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
    for stage, dim in zip(model.stages, inc.kwargs["dims"]):
        mixer = stage.blocks[0].token_mixer
        assert mixer.dwconv_hw.in_channels * 8 == dim  # the 1/8 branch ratio stays exact
    with pytest.raises(ValueError, match="224x224"):
        scale("randformer_s12", 2.0, "dWr")  # fixed token count: no resolution scaling
    assert scale("randformer_s12", 2.0, "dw").input_size == (3, 224, 224)
