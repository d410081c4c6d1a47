import torch
from torch.nn import functional as F

from convscope.ops import PyramidConv


def test_one_level_pyramid_is_conv_plus_bn():
    torch.manual_seed(0)
    m = PyramidConv(4, 6)
    x = torch.randn(2, 4, 8, 8)
    for train in (True, False):
        m.train(train)
        y = F.conv2d(x, m.conv_mid.weight, m.conv_mid.bias, padding=1)
        bn = m.ibn.bn
        ref = F.batch_norm(y, None if train else bn.running_mean, None if train else bn.running_var, bn.weight,
                           bn.bias, training=train, eps=bn.eps)
        torch.testing.assert_close(m([x])[0], ref)


def test_three_levels_sum_neighbours_and_share_bn_statistics():
    torch.manual_seed(0)
    m = PyramidConv(4, 4, ibn=False)
    xs = [torch.randn(1, 4, 16, 16), torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)]
    ys = m(xs)
    mid = m.conv_mid(xs[1]) + m.conv_down(xs[0]) + F.interpolate(m.conv_up(xs[2]), size=(8, 8), mode="bilinear",
                                                                  align_corners=True)
    torch.testing.assert_close(ys[1], mid)
    assert [y.shape for y in ys] == [x.shape for x in xs]
    m = PyramidConv(4, 4).train()
    ys = m(xs)
    flat = torch.cat([y.flatten(2) for y in ys], dim=2)  # integrated BN: zero mean over the whole pyramid
    torch.testing.assert_close(flat.mean((0, 2)), torch.zeros(4), atol=1e-5, rtol=0)
