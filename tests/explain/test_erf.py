"""Effective receptive field: RepLKNet's measurement, its area ratios, every family."""
from __future__ import annotations

import pytest
import torch

from convscope.explain.erf import area_ratio, effective_receptive_field

from .zoo import small_model, tiny_convnext, tiny_input


def test_area_ratio_by_hand():
    # uniform 9x9: centred squares hold 9, 25 and 49 of 81; none up to side 7 holds more than 0.99
    m = torch.ones(9, 9)
    assert area_ratio(m, 0.2) == pytest.approx(25 / 81)
    assert area_ratio(m, 0.3) == pytest.approx(25 / 81)
    assert area_ratio(m, 0.5) == pytest.approx(49 / 81)
    assert area_ratio(m, 0.99) == 1.0
    point = torch.zeros(16, 16)
    point[8, 8] = 1.0
    assert area_ratio(point, 0.99) == pytest.approx(9 / 256)


def test_stage_one_erf_lies_inside_the_theoretical_field():
    # stage 0 of ConvNeXt: a 4x4 stride-4 stem, then a 7x7 depthwise conv on that grid: the central position of
    # the 16x16 map (input 64) sees input rows/cols 4 * (8 - 3) .. 4 * (8 + 3) + 3 = 20..47 and nothing else
    model = tiny_convnext()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    erf = effective_receptive_field(model, x, layer=0)
    c = erf.contribution
    assert erf.images == 3 and c.shape == (64, 64)
    outside = torch.ones_like(c, dtype=torch.bool)
    outside[20:48, 20:48] = False
    assert c[outside].abs().max() == 0
    assert (c[20:48, 20:48] > 0).float().mean() > 0.9
    assert erf.map.max() == pytest.approx(1.0)
    torch.testing.assert_close(erf.map, torch.log10(c + 1) / torch.log10(c + 1).max())
    ratios = list(erf.area_ratio.values())
    assert ratios == sorted(ratios) and ratios[-1] <= (29 / 64) ** 2 + 1e-9  # inside the 28x28 field's square


def test_batches_are_averaged_per_image():
    model = tiny_convnext()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    whole = effective_receptive_field(model, x)
    parts = effective_receptive_field(model, [x[:1], x[1:]])
    torch.testing.assert_close(whole.contribution, parts.contribution)
    assert parts.images == 4


@pytest.mark.parametrize("kwargs,match", [(dict(layer=7), "layer must be a feature_info index"),
                                          (dict(thresholds=(0.5, 1.0)), "thresholds must be fractions")])
def test_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        effective_receptive_field(tiny_convnext(), torch.zeros(1, 3, 32, 32), **kwargs)


def test_mixed_sizes_refused():
    with pytest.raises(ValueError, match="same size"):
        effective_receptive_field(tiny_convnext(), [torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 64, 64)])


def test_batch_of_one_gets_the_gradient_a_batch_of_two_gets():
    # torch 2.13's CPU BatchNorm backward is wrong for a batch of one when the gradient arrives strided as
    # flatten(2).transpose(1, 2) leaves it (CvT's projections): the ERF of an image must not depend on its batch
    model = small_model("cvt_13_224")
    x = tiny_input(model)
    one = effective_receptive_field(model, x, layer=0)
    two = effective_receptive_field(model, torch.cat([x, x]), layer=0)
    torch.testing.assert_close(one.contribution, two.contribution, rtol=1e-4, atol=1e-7)
