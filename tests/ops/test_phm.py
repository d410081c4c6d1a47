import pytest
import torch
from torch import nn
from torch.nn import functional as F

from convscope.ops import PHMConv2d


def test_n1_is_a_conv():
    torch.manual_seed(0)
    m = PHMConv2d(3, 5, 3, n=1, padding=1)
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(m(x), F.conv2d(x, m.A[0, 0, 0] * m.F[0], m.bias, padding=1))


def test_kernel_is_sum_of_kronecker_products():
    torch.manual_seed(0)
    m = PHMConv2d(8, 12, 3, n=4)
    ref = torch.zeros(12, 8, 3, 3)
    for s in range(4):
        for x in range(3):
            for y in range(3):
                ref[:, :, x, y] += torch.kron(m.A[s], m.F[s, :, :, x, y])
    torch.testing.assert_close(m.weight, ref)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_parameters_are_one_nth_of_dense(n):
    m = PHMConv2d(32, 64, 3, n=n, bias=False)
    dense = nn.Conv2d(32, 64, 3, bias=False).weight.numel()
    assert m.F.numel() * n == dense and sum(p.numel() for p in m.parameters()) == dense // n + n ** 3
    with pytest.raises(ValueError, match="multiples of n"):
        PHMConv2d(6, 8, 3, n=4)
