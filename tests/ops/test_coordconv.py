import torch
from torch.nn import functional as F

from convscope.ops import AddCoords, CoordConv2d


def test_coordinate_channel_values():
    x = torch.randn(2, 3, 3, 5)
    y = AddCoords(with_r=True)(x)
    assert y.shape == (2, 6, 3, 5)
    torch.testing.assert_close(y[:, :3], x)
    xs = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    ys = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(y[1, 3], xs.expand(3, 5))           # x: along W
    torch.testing.assert_close(y[1, 4], ys[:, None].expand(3, 5))  # y: along H
    torch.testing.assert_close(y[0, 5], (xs[None] ** 2 + ys[:, None] ** 2).sqrt())
    assert (AddCoords()(torch.zeros(1, 1, 1, 4))[0, 2] == 0).all()  # size-1 axis: coordinate 0


def test_coordconv_is_conv_on_appended_channels():
    torch.manual_seed(0)
    m = CoordConv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 6, 7)
    torch.testing.assert_close(m(x), F.conv2d(AddCoords()(x), m.conv.weight, m.conv.bias, padding=1))
    assert m.conv.in_channels == 5
