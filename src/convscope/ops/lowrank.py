"""A priori low-rank convolution with one-way filters ("A priori compression of convolutional neural networks for
wave simulators", seed paper #53; the CP format is that of Lebedev et al., ICLR 2015, arXiv 1412.6553).

The 4-way kernel W (C_out, C_in, kh, kw) is fixed before training to a rank-R canonical polyadic (CP) format,
W[o, i, h, w] = sum_r U[o, r] V[i, r] Kh[r, h] Kw[r, w], one-way filters per mode, and the layer is run as
the equivalent sequence 1x1 conv (C_in -> R), depthwise kh x 1 conv, depthwise 1 x kw conv, 1x1 conv (R -> C_out).
Parameters: R (C_in + kh + kw + C_out) instead of C_out C_in kh kw. With R = C_in kh kw (full rank) every dense
kernel is representable: `from_dense` builds that factorisation, so full rank == dense.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair


class OneWayConv2d(nn.Module):
    """Rank-R CP convolution (stride 1 or more on the depthwise convs; 'same' padding by default)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], rank: int,
                 stride: int = 1, padding: int | tuple[int, int] | None = None, bias: bool = True) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        ph, pw = (kh // 2, kw // 2) if padding is None else _pair(padding)
        sh, sw = _pair(stride)
        self.rank = rank
        self.first = nn.Conv2d(in_channels, rank, 1, bias=False)  # V
        self.vertical = nn.Conv2d(rank, rank, (kh, 1), (sh, 1), (ph, 0), groups=rank, bias=False)  # Kh
        self.horizontal = nn.Conv2d(rank, rank, (1, kw), (1, sw), (0, pw), groups=rank, bias=False)  # Kw
        self.last = nn.Conv2d(rank, out_channels, 1, bias=bias)  # U

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))

    def full_kernel(self) -> torch.Tensor:
        """The dense (C_out, C_in, kh, kw) kernel the factors stand for."""
        u = self.last.weight[:, :, 0, 0]
        v = self.first.weight[:, :, 0, 0]
        kh = self.vertical.weight[:, 0, :, 0]
        kw = self.horizontal.weight[:, 0, 0, :]
        return torch.einsum("or,ri,rh,rw->oihw", u, v, kh, kw)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> OneWayConv2d:
        """The full-rank (R = C_in kh kw) factorisation of a dense stride-1 conv: rank r = (i, h, w) has
        V = e_i, Kh = e_h, Kw = e_w and U[:, r] = W[:, i, h, w]."""
        if conv.groups != 1 or conv.dilation != (1, 1) or isinstance(conv.padding, str):
            raise ValueError("from_dense needs an ungrouped, undilated conv with numeric padding")
        w = conv.weight.detach()
        o, i, kh, kw = w.shape
        m = cls(i, o, (kh, kw), i * kh * kw, conv.stride, conv.padding, conv.bias is not None)
        eye = torch.eye(i * kh * kw, dtype=w.dtype).reshape(i * kh * kw, i, kh, kw)
        with torch.no_grad():
            m.first.weight.copy_(eye.sum((2, 3))[:, :, None, None])
            m.vertical.weight.copy_(eye.sum((1, 3))[:, None, :, None])
            m.horizontal.weight.copy_(eye.sum((1, 2))[:, None, None, :])
            m.last.weight.copy_(w.reshape(o, -1)[:, :, None, None])
            if conv.bias is not None:
                m.last.bias.copy_(conv.bias.detach())
        return m
