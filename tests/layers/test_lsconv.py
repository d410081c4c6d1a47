"""LS convolution: small-kernel aggregation (SKA) against a direct loop, its interleaved weight sharing, its
MAC count, and the LS convolution module."""
from __future__ import annotations

import pytest
import torch

from convscope.analysis import count
from convscope.layers import MIXERS
from convscope.layers.mixers.lsconv import LSConv, ska


def ska_loop(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The official Triton kernel's arithmetic, one output element at a time."""
    n, c, h, width = x.shape
    wc, kk = w.shape[1:3]
    k = int(kk ** 0.5)
    p = (k - 1) // 2
    out = torch.zeros_like(x)
    for b in range(n):
        for ci in range(c):
            for i in range(h):
                for j in range(width):
                    acc = x.new_zeros(())
                    for u in range(k):
                        for v in range(k):
                            ii, jj = i - p + u, j - p + v
                            if 0 <= ii < h and 0 <= jj < width:
                                acc = acc + x[b, ci, ii, jj] * w[b, ci % wc, u * k + v, i, j]
                    out[b, ci, i, j] = acc
    return out


@pytest.mark.parametrize("k", [3, 5])
def test_ska_equals_direct_loop(k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 6, generator=g, dtype=torch.float64)
    w = torch.randn(2, 2, k * k, 5, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ska(x, w), ska_loop(x, w), rtol=1e-12, atol=1e-12)


def test_ska_shares_weights_between_interleaved_channels():
    """Channel c uses weight channel c % Cw: a weight that is nonzero only in channel 1 of Cw = 4 reaches
    channels 1, 5, 9, 13 (not the contiguous block 4..7)."""
    x = torch.randn(1, 16, 4, 4)
    w = torch.zeros(1, 4, 9, 4, 4)
    w[:, 1] = torch.randn(9, 4, 4)
    out = ska(x, w)
    touched = (out.abs().flatten(2).amax(-1) > 0).squeeze(0).nonzero().flatten().tolist()
    assert touched == [1, 5, 9, 13]


def test_ska_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of Cw"):
        ska(torch.randn(1, 6, 4, 4), torch.randn(1, 4, 9, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, Cw, k\*k, H, W\)"):
        ska(torch.randn(1, 8, 4, 4), torch.randn(1, 4, 9, 4, 5))


def test_ska_counts_as_a_depthwise_conv():
    """k*k MACs per output element, what the official flops.py charges (SKA swapped for a 3x3 dw conv)."""
    class M(torch.nn.Module):
        def forward(self, x, w):
            return ska(x, w)

    x, w = torch.randn(2, 16, 7, 5), torch.randn(2, 2, 9, 7, 5)
    r = count(M(), inputs=(x, w))
    assert r.uncounted == {}
    assert r.totals.macs == 2 * 16 * 9 * 7 * 5
    assert r.macs_as("fvcore") == 2 * 16 * 9 * 7 * 5


def test_lsconv_module():
    m = MIXERS["lsconv"](32)
    assert isinstance(m, LSConv)
    x = torch.randn(2, 32, 9, 7, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and m.lkp.cv2.conv.weight.grad is not None
    assert m.lkp(x).shape == (2, 32 // 8, 9, 9, 7)
    with pytest.raises(ValueError, match="divisible"):
        LSConv(20)
