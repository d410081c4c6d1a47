"""Initialisation the operators share."""
from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def conv_default_init_(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """nn.Conv2d's own default initialisation (Kaiming-uniform with a = sqrt(5), bias uniform in +-1/sqrt(fan_in)),
    for operators that hold a convolution's weight in a layout of their own."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(weight[0].numel())
        nn.init.uniform_(bias, -bound, bound)
