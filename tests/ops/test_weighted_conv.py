import torch
from torch import nn
from torch.nn import functional as F

from convscope.ops import WeightedConv2d, density_profile


def test_density_multiplies_taps_and_ones_is_plain_conv():
    torch.manual_seed(0)
    m = WeightedConv2d(3, 4, den=(0.75,))
    x = torch.randn(2, 3, 6, 6)
    phi = torch.tensor([[0.5625, 0.75, 0.5625], [0.75, 1.0, 0.75], [0.5625, 0.75, 0.5625]])
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight * phi, m.bias, padding=1))
    ones = WeightedConv2d(3, 4, den=(1.0, 1.0), stride=2)
    plain = nn.Conv2d(3, 4, 5, 2, 2)
    plain.load_state_dict(ones.state_dict())
    torch.testing.assert_close(ones(x), plain(x))
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in nn.Conv2d(3, 4, 3).parameters())
    torch.testing.assert_close(density_profile([0.1, 0.5]), torch.tensor([0.1, 0.5, 1.0, 0.5, 0.1]))
