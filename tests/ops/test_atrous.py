import torch
from torch import nn
from torch.nn import functional as F

from convscope.ops import ASPP, AtrousConv2d


def test_rate_one_is_plain_conv_and_rate_samples_every_r():
    torch.manual_seed(0)
    a = AtrousConv2d(3, 4, 3, rate=1)
    plain = nn.Conv2d(3, 4, 3, padding=1)
    plain.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(a(x), plain(x))
    a2 = AtrousConv2d(3, 4, 3, rate=2)
    dense = torch.zeros(4, 3, 5, 5)
    dense[:, :, ::2, ::2] = a2.weight.detach()  # rate 2 == 5x5 kernel with holes
    torch.testing.assert_close(a2(x), F.conv2d(x, dense, a2.bias, padding=2), atol=1e-5, rtol=1e-4)


def test_aspp_shape_and_branch_equivalences():
    torch.manual_seed(0)
    m = ASPP(8, 16, rates=(2, 12)).eval()
    x = torch.randn(2, 8, 10, 11)
    assert m(x).shape == (2, 16, 10, 11)
    assert len(m.branches) == 4  # 1x1, two atrous, image pooling
    # a rate larger than the map: every off-centre tap falls in the padding, the branch is a 1x1 conv
    far = m.branches[2][0]
    centre = F.conv2d(x, far.weight[:, :, 1:2, 1:2])
    torch.testing.assert_close(far(x), centre, atol=1e-5, rtol=1e-4)
    # image pooling is constant over space
    pool = m.branches[3](x)
    torch.testing.assert_close(pool, pool[:, :, :1, :1].expand_as(pool))
