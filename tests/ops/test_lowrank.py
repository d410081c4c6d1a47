import torch
from torch import nn
from torch.nn import functional as F

from convscope.ops import OneWayConv2d


def test_factors_compose_to_the_cp_kernel():
    torch.manual_seed(0)
    m = OneWayConv2d(4, 6, 3, rank=5)
    x = torch.randn(2, 4, 7, 8)
    torch.testing.assert_close(m(x), F.conv2d(x, m.full_kernel(), m.last.bias, padding=1), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in m.parameters()) == 5 * (4 + 3 + 3 + 6) + 6


def test_full_rank_equals_dense():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, (3, 5), padding=(1, 2))
    m = OneWayConv2d.from_dense(conv)
    assert m.rank == 3 * 3 * 5
    x = torch.randn(2, 3, 6, 7)
    torch.testing.assert_close(m.full_kernel(), conv.weight.detach())
    torch.testing.assert_close(m(x), conv(x), atol=1e-5, rtol=1e-4)
