"""Small helpers shared by layers and models."""
from __future__ import annotations

import collections.abc
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def to_2tuple(x: int | Sequence[int]) -> tuple[int, int]:
    """`7 -> (7, 7)`; a pair is returned as a tuple."""
    if isinstance(x, collections.abc.Iterable):
        a, b = x
        return int(a), int(b)
    return int(x), int(x)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round `value` to a multiple of `divisor`, never dropping more than 10% (MobileNet rule)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rate of every block, rising linearly from 0 to `drop_path_rate`, split per stage."""
    n = sum(depths)
    rates = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start:start + d])
        start += d
    return out


def init_trunc_normal(module: nn.Module, std: float = 0.02,
                      layers: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)) -> None:
    """Truncated-normal(std) weights and zero biases for every layer of the given types (the papers' init: convs
    and linear layers; the ViT-style models pass `layers=(nn.Linear,)`)."""
    for m in module.modules():
        if isinstance(m, layers):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def scale_classifier_(fc: nn.Module, scale: float) -> None:
    """Multiply a linear classifier's weight and bias by `scale` in place (ConvNeXt's head_init_scale); a head
    without a linear layer (num_classes=0) is left alone."""
    if isinstance(fc, nn.Linear):
        with torch.no_grad():
            fc.weight.mul_(scale)
            if fc.bias is not None:
                fc.bias.mul_(scale)


def checkpoint_seq(blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Run `blocks` in order, recomputing each one's activations in the backward pass."""
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False)
    return x


def fan_in(weight: torch.Tensor) -> int:
    return math.prod(weight.shape[1:]) if weight.ndim > 1 else weight.shape[0]
