"""Models the explain suites run: each family's smallest variant with random weights, and a tiny ConvNeXt."""
from __future__ import annotations

import functools

import torch
from torch import nn

import convscope
from convscope.models import list_models, model_card

from ..conftest import input_size_for, random_model

__all__ = ["PlainNet", "plain_net", "small_model", "smallest_per_family", "tiny_convnext", "tiny_input"]


@functools.cache
def smallest_per_family() -> list[str]:
    """The smallest variant of every family by its card's parameter count (no model is built to find it)."""
    best: dict[str, tuple[float, str]] = {}
    for n in list_models():
        card = model_card(n)
        if card.family not in best or card.params_m < best[card.family][0]:
            best[card.family] = (card.params_m, n)
    return sorted(n for _, n in best.values())


def small_model(name: str, seed: int = 1, **kwargs) -> torch.nn.Module:
    """`name` with random weights in eval mode; models with integer index buffers or frozen matrices (which
    `random_model`'s meta build would leave as garbage) are built normally from a fixed seed."""
    with torch.device("meta"):
        meta = convscope.create_model(name, **kwargs)
    has_int = any(not b.is_floating_point() and "num_batches" not in n for n, b in meta.named_buffers())
    if not has_int and all(p.requires_grad for p in meta.parameters()):
        return random_model(name, seed, **kwargs)
    torch.manual_seed(seed)
    return convscope.create_model(name, **kwargs).eval()


def tiny_input(model: torch.nn.Module, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A small random batch the model takes (see `input_size_for`)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.in_chans, *input_size_for(model), generator=g)


def tiny_convnext(num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """A one-block-per-stage ConvNeXt (8-16 channels) from a fixed seed: cheap enough to call a hundred times."""
    torch.manual_seed(seed)
    return convscope.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 16, 16),
                                  num_classes=num_classes).eval()


class PlainNet(nn.Module):
    """Conv -> BN -> ReLU -> MaxPool -> Conv -> BN -> ReLU -> global average pool -> Linear: Captum has rules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.gap(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


def plain_net() -> nn.Module:
    """A `PlainNet` in float64 and eval mode, its BatchNorms given statistics and affine maps away from identity."""
    torch.manual_seed(0)
    net = PlainNet()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return net.eval().double()
