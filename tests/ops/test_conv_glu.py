import torch
from torch.nn import functional as F

from convscope.layers import MIXERS
from convscope.ops import ConvGLU


def test_conv_glu_matches_explicit_computation():
    torch.manual_seed(0)
    m = ConvGLU(8, hidden_features=24)
    assert m.hidden == 16
    x = torch.randn(2, 8, 5, 6)
    h = F.conv2d(x, m.fc1.weight, m.fc1.bias)
    gate, value = h[:, :16], h[:, 16:]
    g = F.gelu(F.conv2d(gate, m.dwconv.weight, m.dwconv.bias, padding=1, groups=16))
    ref = F.conv2d(g * value, m.fc2.weight, m.fc2.bias)
    torch.testing.assert_close(m(x), ref)
    # TransNeXt's token form: Linear layers on (B, N, C) give the same numbers
    t = x.flatten(2).transpose(1, 2)
    ht = F.linear(t, m.fc1.weight[:, :, 0, 0], m.fc1.bias)
    gt = ht[..., :16].transpose(1, 2).reshape(2, 16, 5, 6)
    gt = F.gelu(F.conv2d(gt, m.dwconv.weight, m.dwconv.bias, padding=1, groups=16)).flatten(2).transpose(1, 2)
    yt = F.linear(gt * ht[..., 16:], m.fc2.weight[:, :, 0, 0], m.fc2.bias)
    torch.testing.assert_close(yt.transpose(1, 2).reshape(2, 8, 5, 6), ref, atol=1e-5, rtol=1e-4)
    assert MIXERS["conv_glu"] is ConvGLU
