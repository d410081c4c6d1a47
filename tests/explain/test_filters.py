"""CNN Filter DB statistics: sparsity, variance entropy, degenerate filters, distribution shift."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.explain.filters import distribution_shift, filter_stats, variance_entropy
from convscope.models import save_weights

from .zoo import small_model


def _net(first: torch.Tensor, second: torch.Tensor) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(first.shape[1], first.shape[0], 3), nn.Conv2d(second.shape[1], second.shape[0], 3),
                        nn.Conv2d(2, 2, 1))  # a 1x1 conv is not a 3x3 filter
    with torch.no_grad():
        net[0].weight.copy_(first)
        net[1].weight.copy_(second)
    return net


def test_statistics_by_hand():
    pattern = torch.arange(9.0).reshape(3, 3) - 4
    scales = torch.tensor([1.0, -2.0, 0.5, 3.0, 1e-4, 2.0]).reshape(3, 2, 1, 1)
    repeated = scales * pattern  # six multiples of one pattern, one of them near zero
    random = torch.randn(64, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    stats = filter_stats(_net(repeated, random[:, :3]))
    assert [layer.name for layer in stats.layers] == ["0", "1"]
    first, second = stats.layers
    assert first.sparsity == pytest.approx(1 / 6)  # 1e-4 * 4 < 1% of 3 * 4
    assert first.entropy == pytest.approx(0.0, abs=1e-9) and first.degenerate_ratio == 1.0
    assert second.sparsity == 0.0 and second.entropy > 0.95 and second.degenerate_ratio < 0.05
    assert first.coefficients.shape == (6, 9) and second.coefficients.shape == (192, 9)
    torch.testing.assert_close(stats.basis @ stats.basis.T, torch.eye(9, dtype=torch.float64))


def test_variance_entropy_of_independent_directions():
    # nine orthogonal filters of equal norm: a flat spectrum, entropy exactly 1
    assert variance_entropy(torch.eye(9, dtype=torch.float64) * 2) == pytest.approx(1.0)


def test_distribution_shift():
    a = torch.randn(500, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = torch.randn(500, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert distribution_shift(a, a) == 0.0
    near, far = distribution_shift(a, b), distribution_shift(a, b * 3 + 2)
    assert 0 < near < 0.2 < far


def test_layer_shift_by_name_and_index():
    stats = filter_stats(_net(torch.randn(4, 2, 3, 3), torch.randn(2, 4, 3, 3)))
    assert stats.shift(0, "1") == stats.shift("0", -1) > 0
    with pytest.raises(ValueError, match="no 3x3 layer 'head'"):
        stats.shift(0, "head")


def test_from_a_checkpoint(tmp_path):
    model = small_model("inception_next_atto")
    path = save_weights(model, tmp_path / "m.safetensors")
    ours, loaded = filter_stats(model), filter_stats("inception_next_atto", checkpoint=path)
    assert len(ours.layers) == len(loaded.layers) > 0
    assert [lay.entropy for lay in ours.layers] == [lay.entropy for lay in loaded.layers]


def test_no_3x3_convolution():
    with pytest.raises(ValueError, match="has no 3x3 convolution"):
        filter_stats(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="sparse_tol and repeat_cos must be in"):
        filter_stats(nn.Sequential(nn.Conv2d(3, 3, 3)), sparse_tol=0.0)
