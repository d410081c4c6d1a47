"""Every operator in convscope.ops runs in fp32, bf16 and channels_last with the same numbers (within bf16
precision), and `count()` prices every aten op it calls (nothing uncounted)."""
import pytest
import torch

from convscope.analysis import count
from convscope.layers.mixers import WaveBlock
from convscope.ops import (
    ASPP,
    ESPCN,
    AtrousConv2d,
    Conv2Plus1d,
    ConvGLU,
    CoordConv2d,
    HaarDWT2d,
    OneWayConv2d,
    PHMConv2d,
    PyramidConv,
    SeparableConv3d,
    SeparableConv4d,
    SpatialMessagePassing,
    SubPixelConv2d,
    WeightedConv2d,
)


class _DWTRoundTrip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dwt = HaarDWT2d(2)

    def forward(self, x):
        ll, highs = self.dwt(x)
        return torch.cat([ll.flatten(1)] + [h.flatten(1) for h in highs], 1)


class _Pyramid(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = PyramidConv(8, 8)

    def forward(self, x):
        ys = self.p([x, x[..., ::2, ::2], x[..., ::4, ::4]])
        return torch.cat([y.flatten(1) for y in ys], 1)


OPS = {  # name: (factory, input shape)
    "scnn": (lambda: SpatialMessagePassing(8, 3), (2, 8, 8, 8)),
    "sepc": (_Pyramid, (2, 8, 16, 16)),
    "phm": (lambda: PHMConv2d(8, 16, 3, n=4, padding=1), (2, 8, 8, 8)),
    "subpixel": (lambda: SubPixelConv2d(8, 3, 2), (2, 8, 8, 8)),
    "espcn": (lambda: ESPCN(3, 1), (1, 1, 8, 8)),
    "coordconv": (lambda: CoordConv2d(8, 8, 3, padding=1, with_r=True), (2, 8, 8, 8)),
    "weighted_conv": (lambda: WeightedConv2d(8, 8, (0.5, 0.75)), (2, 8, 8, 8)),
    "conv2plus1d": (lambda: Conv2Plus1d(8, 8), (2, 8, 4, 8, 8)),
    "separable3d": (lambda: SeparableConv3d(8, 8), (2, 8, 4, 8, 8)),
    "separable4d": (lambda: SeparableConv4d(4, 4), (1, 4, 4, 4, 4, 4)),
    "oneway": (lambda: OneWayConv2d(8, 8, 3, rank=6), (2, 8, 8, 8)),
    "atrous": (lambda: AtrousConv2d(8, 8, 3, rate=2), (2, 8, 8, 8)),
    "aspp": (lambda: ASPP(8, 8, rates=(2, 4)), (2, 8, 8, 8)),
    "conv_glu": (lambda: ConvGLU(8), (2, 8, 8, 8)),
    "haar_dwt": (_DWTRoundTrip, (2, 8, 8, 8)),
    "wavemix": (lambda: WaveBlock(16, level=3, dropout=0.0), (2, 16, 16, 16)),
}


def _channels_last(x):
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


@pytest.mark.parametrize("name", sorted(OPS))
def test_dtypes_layouts_and_counting(name):
    torch.manual_seed(0)
    factory, shape = OPS[name]
    m = factory().eval()
    x = torch.randn(shape)
    ref = m(x)
    torch.testing.assert_close(m(_channels_last(x)), ref, atol=1e-4, rtol=1e-4)  # channels_last input
    bf = m.to(torch.bfloat16)
    out = bf(x.to(torch.bfloat16)).float()
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max() + 0.05
    res = count(m.float(), inputs=torch.randn(shape))
    assert not res.uncounted, res.uncounted
    assert res.totals.macs > 0
