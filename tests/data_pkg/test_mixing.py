"""Mixup, CutMix (label weight = pasted area, exactly) and label smoothing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convscope.data.mixing import (
    MixupCutMix,
    classification_loss,
    cutmix,
    cutmix_box,
    mixup,
    smooth_one_hot,
    soft_target_cross_entropy,
)


def _constant_batch(n=6, c=2, h=17, w=23):
    """Image i is filled with the value i, so every pixel tells which image it came from."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, c, h, w).clone()


def test_cutmix_label_weight_is_the_pasted_area_exactly():
    n, h, w = 6, 17, 23
    clipped = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        lam = float(rng.uniform(0.05, 0.95))
        x = _constant_batch(n, 2, h, w)
        targets = F.one_hot(torch.arange(n), n).float()
        out, mixed, lam_exact = cutmix(x, targets, lam, np.random.default_rng(seed))
        y0, y1, x0, x1 = cutmix_box(h, w, lam, np.random.default_rng(seed))
        cut = math.sqrt(1 - lam)
        clipped += (y1 - y0, x1 - x0) != (int(h * cut) // 2 * 2, int(w * cut) // 2 * 2)
        assert lam_exact == 1 - (y1 - y0) * (x1 - x0) / (h * w)
        for i in range(n):
            partner = n - 1 - i
            pasted = int((out[i] == partner).sum()) // 2             # pixels per channel taken from the partner
            assert pasted == (y1 - y0) * (x1 - x0)                     # label weight 1 - lam_exact = pasted / (h w)
            assert int((out[i] == i).sum()) // 2 == h * w - pasted
            assert mixed[i, i] == pytest.approx(lam_exact, abs=1e-6)
            assert mixed[i, partner] == pytest.approx(1 - lam_exact, abs=1e-6)
    assert clipped > 50   # boxes crossing the border were exercised


def test_mixup_blends_images_and_targets():
    x = torch.randn(4, 3, 8, 8)
    t = F.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    y, ty = mixup(x, t, 0.7)
    assert torch.allclose(y[0], 0.7 * x[0] + 0.3 * x[3])
    assert torch.allclose(ty[1], torch.tensor([0, 0.7, 0.3, 0, 0]))
    assert torch.allclose(ty.sum(1), torch.ones(4))


def test_mixer_probabilities_and_smoothing():
    labels = torch.tensor([0, 1, 2, 3])
    x = torch.randn(4, 1, 8, 8)
    off = MixupCutMix(4, mixup_alpha=0.8, prob=0.0, label_smoothing=0.1)
    y, t = off(x, labels, np.random.default_rng(0))
    assert torch.equal(y, x) and torch.allclose(t, smooth_one_hot(labels, 4, 0.1))
    on = MixupCutMix(4, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0)
    kinds = set()
    for s in range(20):
        y, t = on(x, labels, np.random.default_rng(s))
        kinds.add("cutmix" if bool(((y == x) | (y == x.flip(0))).all()) else "mixup")
        assert torch.allclose(t.sum(1), torch.ones(4))
    assert kinds == {"cutmix", "mixup"}
    with pytest.raises(ValueError, match="even batch"):
        on(torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2]), np.random.default_rng(0))


def test_label_smoothing_loss_value():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    eps, c = 0.1, 4
    logp = [2.0 - math.log(sum(math.exp(v) for v in (2.0, 0.5, -1.0, 0.0))) + d for d in (0, -1.5, -3.0, -2.0)]
    expected = -((1 - eps + eps / c) * logp[0] + eps / c * sum(logp[1:]))
    assert expected == pytest.approx(0.50485, abs=1e-5)   # 0.925 * 0.3424 + 0.025 * (1.8424 + 3.3424 + 2.3424)
    t = smooth_one_hot(torch.tensor([0]), c, eps)
    assert torch.allclose(t, torch.tensor([[0.925, 0.025, 0.025, 0.025]]))
    assert soft_target_cross_entropy(logits, t).item() == pytest.approx(expected, rel=1e-6)
    assert classification_loss(logits, torch.tensor([0]), eps).item() == pytest.approx(expected, rel=1e-6)
