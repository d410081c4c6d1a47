"""WaveMix block (Jeevan and Sethi, "WaveMix: A Resource-efficient Neural Network for Image Analysis",
arXiv 2205.14375; official pranavphoenix/WaveMix `Level{1..4}Waveblock`), the 2-D Haar DWT token mixer.

x (C channels) -> 1x1 conv to C/4 -> Haar DWT at levels 1..L (`convscope.ops.haar_dwt2d`); level j gives
[LL_j, LH_j, HL_j, HH_j] = C channels at H / 2^j. The deepest level goes through a feed-forward
1x1 conv (C -> mult C) -> GELU -> dropout -> 1x1 conv (-> ff_channel) -> 4x4/2 transposed conv (x2 upsampling)
-> BN to C/2 channels; each shallower level is concatenated with what came up (C + C/2) and goes through its own
feed-forward, the last one (level 1) giving C channels at H. The residual is added by the model's block.
Sizes that are not multiples of 2^L are zero-padded at the end and the output cropped (the official code needs
exact multiples).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...ops.wavelet import haar_dwt2d


def _feedforward(in_ch: int, out_ch: int, mult: int, ff_channel: int, dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, dim * mult, 1), nn.GELU(), nn.Dropout(dropout),
                         nn.Conv2d(dim * mult, ff_channel, 1),
                         nn.ConvTranspose2d(ff_channel, out_ch, 4, stride=2, padding=1), nn.BatchNorm2d(out_ch))


class WaveBlock(nn.Module):
    """Multi-level wavelet token mixer, (B, C, H, W) -> (B, C, H, W); C must be a multiple of 4. Submodule names
    follow the official code (`reduction`, `feedforward` for level 1, `feedforward1..L` for L > 1)."""

    channels_last = False

    def __init__(self, dim: int, level: int = 3, mult: int = 2, ff_channel: int | None = None,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"WaveBlock needs a width that is a multiple of 4; got {dim}")
        if not 1 <= level <= 4:
            raise ValueError(f"level must be 1, 2, 3 or 4; got {level}")
        ff_channel = dim if ff_channel is None else ff_channel
        self.level = level
        self.multiple = 2 ** level
        self.reduction = nn.Conv2d(dim, dim // 4, 1)
        if level == 1:
            self.feedforward = _feedforward(dim, dim, mult, ff_channel, dim, dropout)
            self.ff_names = ["feedforward"]
        else:
            for j in range(1, level + 1):
                in_ch = dim if j == level else dim + dim // 2
                out_ch = dim if j == 1 else dim // 2
                self.add_module(f"feedforward{j}", _feedforward(in_ch, out_ch, mult, ff_channel, dim, dropout))
            self.ff_names = [f"feedforward{j}" for j in range(1, level + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.reduction(x)
        feats = []
        ll = x
        for _ in range(self.level):
            ll, highs = haar_dwt2d(ll)
            feats.append(torch.cat([ll, highs.flatten(1, 2)], dim=1))
        y = getattr(self, self.ff_names[-1])(feats[-1])
        for j in range(self.level - 2, -1, -1):
            y = getattr(self, self.ff_names[j])(torch.cat([feats[j], y], dim=1))
        return y[..., :h, :w] if ph or pw else y
