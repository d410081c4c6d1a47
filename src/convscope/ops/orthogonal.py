"""Orthogonality regulariser for convolutions (Wang, Chen, Chakraborty and Yu, "Orthogonal Convolutional Neural
Networks", CVPR 2020, arXiv 1911.12207; official code samaonline/Orthogonal-Convolutional-Neural-Networks).

A convolution is orthogonal when its doubly block-Toeplitz matrix K satisfies K K^T = I (row orthogonality). The
paper shows this is equivalent to the kernel's self-convolution being an identity impulse:
Conv(W, W, stride S, padding P) = I_r0, a (C_out, C_out) identity at the spatial centre and zero elsewhere, with
P = floor((k - 1) / S) * S. The regulariser is the squared Frobenius distance ||Conv(W, W) - I_r0||_F^2: zero
for an orthogonal conv (e.g. a 1x1-centred delta kernel with orthonormal channel rows), positive otherwise.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_orthogonality(weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """||Conv(W, W, stride, P) - I_r0||_F^2 for a (C_out, C_in, k, k) kernel (square, odd or even k)."""
    k = weight.shape[-1]
    padding = ((k - 1) // stride) * stride
    out = F.conv2d(weight, weight, stride=stride, padding=padding)
    target = torch.zeros_like(out)
    ct = out.shape[-1] // 2
    target[:, :, ct, ct] = torch.eye(weight.shape[0], dtype=out.dtype, device=out.device)
    return (out - target).pow(2).sum()


def orthogonality_penalty(model: nn.Module, stride_aware: bool = True) -> torch.Tensor:
    """Sum of `conv_orthogonality` over every ungrouped nn.Conv2d with square kernels in `model` (using each
    conv's own stride when `stride_aware`); add lambda * this to the loss (the paper uses lambda = 0.1 ... 0.01)."""
    total = None
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size[0] == m.kernel_size[1]:
            v = conv_orthogonality(m.weight, m.stride[0] if stride_aware else 1)
            total = v if total is None else total + v
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return total
