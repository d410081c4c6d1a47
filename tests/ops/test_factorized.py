import torch
from torch.nn import functional as F

from convscope.ops import Conv2Plus1d, SeparableConv3d, SeparableConv4d, conv4d


def test_2plus1d_mid_channels_match_full_3d_params_and_compose():
    m = Conv2Plus1d(16, 32, (3, 3))
    full = 3 * 3 * 3 * 16 * 32
    mid = m.mid_channels
    assert mid == full // (9 * 16 + 3 * 32)
    assert abs(m.spatial.weight.numel() + m.temporal.weight.numel() - full) <= 9 * 16 + 3 * 32
    m.eval()
    x = torch.randn(1, 16, 4, 6, 6)
    y = F.conv3d(F.relu(m.bn(F.conv3d(x, m.spatial.weight, padding=(0, 1, 1)))), m.temporal.weight, padding=(1, 0, 0))
    torch.testing.assert_close(m(x), y)


def test_separable_3d_equals_outer_product_kernel():
    torch.manual_seed(0)
    m = SeparableConv3d(3, 4, (3, 5, 3))
    x = torch.randn(2, 3, 5, 6, 7)
    w = m.full_kernel()
    assert w.shape == (4, 3, 3, 5, 3)
    torch.testing.assert_close(m(x), F.conv3d(x, w, padding=(1, 2, 1)), atol=1e-5, rtol=1e-4)


def test_conv4d_reference_and_separable_4d_equal_outer_product_kernel():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 5, 3, 4)
    # the 4-D reference on a kernel of size 1 along the 4th axis is a 3-D conv per slice
    w = torch.randn(3, 2, 3, 3, 3, 1)
    ref = torch.stack([F.conv3d(x[..., i], w[..., 0], padding=1) for i in range(4)], -1)
    torch.testing.assert_close(conv4d(x, w), ref, atol=1e-5, rtol=1e-4)
    m = SeparableConv4d(2, 3, 3)
    torch.testing.assert_close(m(x), conv4d(x, m.full_kernel()), atol=1e-5, rtol=1e-4)
