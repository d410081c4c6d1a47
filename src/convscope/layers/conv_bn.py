"""Convolution followed by BatchNorm (and an activation): the train-time unit of the re-parameterised models."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .reparam import fuse_bn_into_conv_, merge_parallel_convs


class ConvBnAct(nn.Module):
    """conv (no bias) -> BatchNorm2d -> act, the `conv_bn` / `conv_bn_relu` unit of RepVGG-style networks.

    `reparameterize()` folds the BatchNorm into the conv (which then gets a bias) and replaces it with an
    Identity, so the deploy form's keys are `conv.weight` and `conv.bias`. Padding defaults to "same" for odd
    kernels: `dilation * (kernel_size - 1) // 2`.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int | None = None,
                 dilation: int = 1, groups: int = 1, act_layer: Callable[[], nn.Module] | None = None) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_chs)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            fuse_bn_into_conv_(self.conv, self.bn)
            self.bn = nn.Identity()


class ParallelConvBn(nn.Module):
    """A sum of parallel conv+BN branches that read the same input: one conv with the largest kernel (`lk_conv`)
    plus `branches` with smaller and/or dilated kernels, all with the same channels, groups and stride.

    `reparameterize()` folds every BatchNorm into its conv and merges all branches into `lk_conv.conv`
    (small kernels zero-padded, dilated ones written out densely), leaving `branches` empty: the deploy form is a
    single conv with a bias, with keys `lk_conv.conv.weight` and `lk_conv.conv.bias`.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, branches: Sequence[tuple[int, int]] = (),
                 stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        for k, r in branches:
            if r * (k - 1) + 1 > kernel_size:
                raise ValueError(f"a {k}x{k} branch with dilation {r} spans {r * (k - 1) + 1} pixels, more than "
                                 f"the {kernel_size}x{kernel_size} kernel it merges into")
        self.kernel_size = kernel_size
        self.lk_conv = ConvBnAct(in_chs, out_chs, kernel_size, stride=stride, groups=groups)
        self.branches = nn.ModuleList(ConvBnAct(in_chs, out_chs, k, stride=stride, dilation=r, groups=groups)
                                      for k, r in branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lk_conv(x)
        for branch in self.branches:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        self.lk_conv.reparameterize()
        if len(self.branches) == 0:
            return
        for branch in self.branches:
            branch.reparameterize()
        weight, bias = merge_parallel_convs([self.lk_conv.conv] + [b.conv for b in self.branches])
        self.lk_conv.conv.weight = nn.Parameter(weight)
        self.lk_conv.conv.bias = nn.Parameter(bias)
        self.branches = nn.ModuleList()
