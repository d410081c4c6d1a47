"""Channel MLPs and MLP classifier heads."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .grn import GlobalResponseNorm

Factory = Callable[..., nn.Module]


class Mlp(nn.Module):
    """fc1 -> act -> dropout -> fc2. Linear layers on channels-last tokens, or 1x1 convs on NCHW maps when
    `use_conv=True` (same arithmetic, different layout)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Factory = nn.GELU, bias: bool = True, drop: float = 0.0, use_conv: bool = False) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        if use_conv:
            self.fc1 = nn.Conv2d(in_features, hidden_features, 1, bias=bias)
            self.fc2 = nn.Conv2d(hidden_features, out_features, 1, bias=bias)
        else:
            self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
            self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class ConvMlp(nn.Module):
    """1x1 conv -> (norm) -> act -> dropout -> 1x1 conv on NCHW maps (InceptionNeXt's MLP)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Factory = nn.GELU, norm_layer: Factory | None = None, bias: bool = True,
                 drop: float = 0.0) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1, bias=bias)
        self.norm = norm_layer(hidden_features) if norm_layer else nn.Identity()
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_features, out_features, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.norm(self.fc1(x)))))


class GlobalResponseNormMlp(nn.Module):
    """ConvNeXt-V2 MLP: fc1 -> act -> GRN -> fc2 (Linear on channels-last, or 1x1 conv on NCHW)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Factory = nn.GELU, bias: bool = True, drop: float = 0.0, use_conv: bool = False) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        linear = (lambda i, o: nn.Conv2d(i, o, 1, bias=bias)) if use_conv else (lambda i, o: nn.Linear(i, o, bias=bias))
        self.fc1 = linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.grn = GlobalResponseNorm(hidden_features, channels_last=not use_conv)
        self.fc2 = linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.grn(self.drop(self.act(self.fc1(x)))))


class MlpHead(nn.Module):
    """Classifier MLP on pooled features: fc1 (ratio x dim) -> act -> norm -> dropout -> fc2.

    The head of InceptionNeXt (GELU, LayerNorm, ratio 3) and of ConvFormer/CAFormer (SquaredReLU, LayerNorm,
    ratio 4). `forward(x, pre_logits=True)` stops before fc2; `reset(n)` replaces fc2 only.
    """

    def __init__(self, in_features: int, num_classes: int = 1000, mlp_ratio: float = 4,
                 act_layer: Factory = nn.GELU, norm_layer: Factory = nn.LayerNorm, drop: float = 0.0,
                 bias: bool = True) -> None:
        super().__init__()
        hidden = int(mlp_ratio * in_features)
        self.num_features = hidden
        self.bias = bias
        self.fc1 = nn.Linear(in_features, hidden, bias=bias)
        self.act = act_layer()
        self.norm = norm_layer(hidden)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes, bias=bias) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc2 = nn.Linear(self.num_features, num_classes, bias=self.bias) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.norm(self.act(self.fc1(x))))
        return x if pre_logits else self.fc2(x)
