import torch
from torch import nn

from convscope.ops import conv_orthogonality, orthogonality_penalty


def test_zero_for_orthogonal_positive_otherwise_and_descends():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    w = torch.zeros(6, 8, 3, 3)
    w[:, :, 1, 1] = q[:6]  # delta kernel with orthonormal channel rows
    for s in (1, 2):
        assert conv_orthogonality(w, s).item() < 1e-10
    conv = nn.Conv2d(8, 6, 3, bias=False)
    v = orthogonality_penalty(nn.Sequential(conv))
    assert v.item() > 0
    v.backward()
    with torch.no_grad():
        conv.weight -= 1e-3 * conv.weight.grad
    assert orthogonality_penalty(nn.Sequential(conv)).item() < v.item()
