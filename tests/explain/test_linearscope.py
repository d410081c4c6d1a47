"""LinearScope's exact input-dependent linear map, local linearisation, and occlusion with layer masking."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.explain.linearscope import linear_map, occlusion

from .zoo import plain_net, tiny_convnext, tiny_input


def test_piecewise_linear_network_is_exactly_linear_at_x():
    net = plain_net()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lm = linear_map(net, x)
    assert lm.exact and lm.error < 1e-5 and lm.A.shape == (5, 3 * 16 * 16)
    torch.testing.assert_close(lm.A @ x.flatten() + lm.b, net(x)[0].detach(), rtol=1e-10, atol=1e-12)
    # b is not f(x) - A x by construction: it is the frozen-gate network on a zero input, so a nearby input with
    # the same gates is mapped by the same A and b
    near = x + 1e-9 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(lm.A @ near.flatten() + lm.b, net(near)[0].detach(), rtol=1e-9, atol=1e-12)
    assert lm.b.abs().max() > 1e-3  # the biases and BatchNorm shifts are in b


def test_smooth_network_gets_its_local_linearisation():
    net = tiny_convnext().double()
    x = tiny_input(net).double()
    lm = linear_map(net, x)
    assert not lm.exact and lm.error > 1e-5  # GELU and LayerNorm: no frozen-gate linear form
    torch.testing.assert_close(lm.A @ x.flatten() + lm.b, lm.output)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        directional = (net(x + h * v) - net(x - h * v))[0] / (2 * h)
    torch.testing.assert_close(lm.A @ v.flatten(), directional, rtol=1e-5, atol=1e-8)


class BiasedSum(nn.Module):
    """x + bias (a 1x1 conv), then a 1x1 identity conv, summed over positions: two logits, the same."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.conv1.bias.fill_(bias)
            self.conv2.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv2(self.conv1(x)).flatten(1).sum(1, keepdim=True)
        return torch.cat([s, s], 1)


def test_occlusion_with_and_without_layer_masking():
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net = BiasedSum(0.5).double().eval()
    plain = occlusion(net, x, target=0, patch=4, layer_masking=False)
    layered = occlusion(net, x, target=0, patch=4)
    for i in (0, 4):
        for j in (0, 4):
            part = x[0, 0, i:i + 4, j:j + 4].sum()
            # input masking: the bias refills the hole; layer masking also removes what the bias put there
            assert plain[0, i:i + 4, j:j + 4].unique().item() == pytest.approx(part.item())
            assert layered[0, i:i + 4, j:j + 4].unique().item() == pytest.approx(part.item() + 0.5 * 16)


def test_overlapping_patches_are_averaged():
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    net = BiasedSum(0.0).double().eval()
    att = occlusion(net, x, target=0, patch=2, stride=1, layer_masking=False)
    torch.testing.assert_close(att, torch.full((1, 4, 4), 4.0, dtype=torch.float64))  # every patch drops 4


def test_bad_values():
    with pytest.raises(ValueError, match="one image at a time"):
        linear_map(plain_net(), torch.zeros(2, 3, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="patch must be a positive integer"):
        occlusion(tiny_convnext(), torch.zeros(1, 3, 32, 32), patch=0)
