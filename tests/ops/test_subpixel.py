import torch
from torch.nn import functional as F

from convscope.analysis import count
from convscope.ops import ESPCN, SubPixelConv2d


def test_subpixel_is_conv_then_pixel_shuffle():
    torch.manual_seed(0)
    m = SubPixelConv2d(4, 3, upscale=2)
    x = torch.randn(2, 4, 5, 6)
    y = m(x)
    assert y.shape == (2, 3, 10, 12)
    c = F.conv2d(x, m.conv.weight, m.conv.bias, padding=1)
    torch.testing.assert_close(y, F.pixel_shuffle(c, 2))
    # periodic shuffle: output pixel (r*i + a, r*j + b) of channel k is conv channel k*r^2 + a*r + b at (i, j)
    torch.testing.assert_close(y[:, 1, 2 * 3 + 1, 2 * 4 + 0], c[:, 1 * 4 + 1 * 2 + 0, 3, 4])


def test_espcn_layout():
    m = ESPCN(upscale=3, in_chans=1)
    shapes = [tuple(p.shape) for n, p in m.named_parameters() if n.endswith("weight")]
    assert shapes == [(64, 1, 5, 5), (32, 64, 3, 3), (9, 32, 3, 3)]
    assert m(torch.randn(1, 1, 10, 12)).shape == (1, 1, 30, 36)
    r = count(m, (1, 1, 10, 12))
    assert not r.uncounted
    assert r.totals.macs == 10 * 12 * (64 * 25 + 32 * 64 * 9 + 9 * 32 * 9)
