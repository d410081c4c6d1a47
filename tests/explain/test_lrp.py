"""LRP: parity with Captum where it has rules, conservation on every family, the rules by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.explain.lrp import check_conservation, lrp

from .zoo import plain_net, tiny_convnext, tiny_input


def test_parity_with_captum():
    from captum.attr import LRP
    net = plain_net()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theirs = LRP(net).attribute(x.clone().requires_grad_(True), target=torch.tensor([1, 3]))
    ours = lrp(net, x, target=[1, 3], rule="epsilon", epsilon=1e-9)  # Captum's default: epsilon 1e-9 everywhere
    torch.testing.assert_close(ours.input, theirs.detach(), rtol=1e-6, atol=1e-9)
    assert ours.input.abs().max() > 1e-3


class Flat(nn.Sequential):
    """Flatten an image batch, then a Linear layer."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__(nn.Flatten(), lin)


def test_epsilon_rule_by_hand():
    # one Linear layer: R_i = x_i w_ti z_t / (z_t + eps), and the bias keeps b_t z_t / (z_t + eps)
    torch.manual_seed(0)
    lin = nn.Linear(6, 3).double()

    x = torch.randn(1, 1, 2, 3, dtype=torch.float64)
    z = lin(x.flatten(1))[0, 2]
    rel = lrp(Flat(lin), x, target=2, epsilon=0.1)
    expected = x.flatten() * lin.weight[2] * z / (z + 0.1 * torch.sign(z))
    torch.testing.assert_close(rel.input.flatten(), expected.detach())
    assert rel.logit.item() == pytest.approx(z.item())


@pytest.mark.parametrize("rule", ["gamma", "zplus"])
def test_positive_rules_by_hand(rule):
    torch.manual_seed(0)
    lin = nn.Linear(4, 2, bias=False).double()

    x = torch.rand(1, 1, 2, 2, dtype=torch.float64)  # positive inputs, as after a ReLU
    w = lin.weight[0]
    w_rho = w + 0.5 * w.clamp_min(0) if rule == "gamma" else w.clamp_min(0)
    z, z_rho = (x.flatten() * w).sum(), (x.flatten() * w_rho).sum()
    rel = lrp(Flat(lin), x, target=0, rule=rule, gamma=0.5, epsilon=0.0)
    torch.testing.assert_close(rel.input.flatten(), (x.flatten() * w_rho * z / z_rho).detach())
    assert rel.input.sum().item() == pytest.approx(z.item())


def test_absorbed_reports_the_biases():
    model = tiny_convnext()
    with torch.no_grad():
        model.head.fc.bias.fill_(0.5)
    rel = lrp(model, tiny_input(model), target=2, epsilon=0.0)
    # the classifier's bias keeps its share: at least the part the bias adds to the logit shows up as absorbed
    with pytest.raises(ValueError, match="not conserved"):
        check_conservation(rel)
    assert rel.absorbed.abs().item() > 0.1


def test_parameters_and_modes_restored():
    model = tiny_convnext()
    model.train()
    model.head.fc.weight.requires_grad_(False)
    lrp(model, tiny_input(model))
    assert model.training and not model.head.fc.weight.requires_grad and model.stem[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs,match", [(dict(rule="alpha-beta"), "rule must be one of"),
                                          (dict(epsilon=-1.0), "epsilon and gamma must be >= 0"),
                                          (dict(target=99), "target must be one class")])
def test_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lrp(tiny_convnext(), torch.zeros(1, 3, 32, 32), **kwargs)
