"""Every explanation on the smallest variant of every family (one build per family, tiny inputs)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.explain import (
    check_conservation,
    class_activation_map,
    effective_receptive_field,
    linear_map,
    lrp,
    occlusion,
)

from .zoo import small_model, smallest_per_family, tiny_input


def additive_constants_zeroed(model: nn.Module) -> nn.Module:
    """Zero what LRP cannot conserve through: biases, BatchNorm means, norm shifts, position tables, class tokens."""
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            leaf = name.rsplit(".", 1)[-1]
            if t.is_floating_point() and (leaf in ("running_mean", "beta") or leaf.endswith("bias")
                                          or "pos_embed" in name or "cls_token" in name):
                t.zero_()
    return model


def _cam(model, x):
    cam = class_activation_map(model, x)  # the family's default layer, the top class
    assert cam.maps.shape == (1, *x.shape[-2:])
    assert torch.isfinite(cam.maps).all() and cam.maps.min() >= 0
    assert cam.maps.max() > 0.99  # the gradient reached the layer: a normalised, non-empty map
    assert cam.targets.tolist() == [model(x).argmax(1).item()]


def _erf(model, x):
    erf = effective_receptive_field(model, x)
    assert erf.map.shape == x.shape[-2:] and erf.images == 1
    assert erf.map.max() == pytest.approx(1.0) and erf.contribution.min() >= 0
    assert all(0 < r <= 1 for r in erf.area_ratio.values())


def _linear_map_and_occlusion(model, x):
    lm = linear_map(model, x)
    scale = (lm.A.abs() @ x.abs().flatten()).max().item()  # float32 rounding of A x (LSNet's logits are large)
    torch.testing.assert_close(lm.A @ x.flatten() + lm.b, lm.output, rtol=0, atol=1e-6 * scale)
    assert lm.A.shape == (2, x.numel()) and lm.A.abs().max() > 0
    att = occlusion(model, x, patch=min(x.shape[-2:]) // 2)
    assert att.shape == (1, *x.shape[-2:]) and torch.isfinite(att).all() and att.abs().max() > 0


def _lrp_conservation(model, x):
    rel = lrp(additive_constants_zeroed(model), x, epsilon=0.0)
    assert rel.input.shape == x.shape and torch.isfinite(rel.input).all()
    check_conservation(rel, rtol=1e-3)  # input relevance = logit within 0.1%
    assert rel.input.abs().sum() > 0.1 * rel.logit.abs().sum()  # spread over the input, not vanished


@pytest.mark.parametrize("name", smallest_per_family())
def test_every_explanation(name):
    model = small_model(name)
    x = tiny_input(model)
    _cam(model, x)
    _erf(model, x)
    model.reset_classifier(2)  # a two-row Jacobian for the linear map
    _linear_map_and_occlusion(model, x)
    _lrp_conservation(model, x)  # last: it zeroes the model's additive constants
