"""WaveMix (Jeevan and Sethi, "WaveMix: A Resource-efficient Neural Network for Image Analysis", arXiv 2205.14375;
official pranavphoenix/WaveMix). An isotropic network whose token mixing is a multi-level 2-D Haar DWT: a conv
stem to H/4, `depth` residual WaveMix blocks (`convscope.layers.mixers.WaveBlock`: 1x1 reduction, DWT at levels
1..L, feed-forward with transposed-conv upsampling, BN), global average pooling and a linear classifier.

Registered: the four released ImageNet-1k configurations (Saved_weights/ImageNet/*.py). Keys are ours (stem,
stages.g.blocks.j.mixer, head.fc); `convert_official` maps the official ones (conv, layers.i, pool.2).
Input sides must be multiples of 4 * 2^L (the stem's reduction times the deepest DWT's), as in the official code,
except for the level-4 network, which takes multiples of 32 (see `WaveMix.__init__`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ..layers import ClassifierHead, drop_path_or_identity
from ..layers.mixers.wavemix import WaveBlock
from .base import ConvScopeModel
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits


class WaveMixBlock(nn.Module):
    """x + DropPath(WaveBlock(x))."""

    def __init__(self, dim: int, level: int = 3, mult: int = 2, ff_channel: int | None = None, dropout: float = 0.5,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.mixer = WaveBlock(dim, level, mult, ff_channel, dropout)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mixer(x))


class WaveMix(ConvScopeModel):
    """WaveMix: stem ('patchify': 3x3 conv to C/4, 3x3 conv to C/2, p x p / p conv to C, GELU, BN; 'strided':
    two 3x3 stride-s convs to C/2 and C) -> depths[0] WaveMix blocks at width dims[0] -> GAP -> Linear.
    Isotropic: the blocks are grouped (default 4 groups of 4) so that feature extraction has several taps, all
    at the stem's resolution and one width (`dims` entries must be equal)."""

    @classmethod
    def traits_for(cls, *, dims: Sequence[int], level: int, stem: str, patch_size: int, stride: int) -> ModelTraits:
        """Isotropic: every block group is a tap at the stem's stride. The official code needs input sides that
        are multiples of that stride times 2**level; the level-4 strided network (64) also takes multiples of 32
        here, its deepest DWT zero-padding the map (pywt's 'zero' mode) and cropping the result."""
        reduction = patch_size if stem == "patchify" else stride * stride
        m = min(reduction * 2 ** level, 32)
        return ModelTraits(channels=tuple(dims), reductions=(reduction,) * len(dims),
                           taps=tuple(f"stages.{i}" for i in range(len(dims))), num_features=dims[-1],
                           min_input_size=(m, m), input_multiple=m, reparameterizable=True)

    def __init__(self, depths: tuple[int, ...] = (4, 4, 4, 4), dims: tuple[int, ...] = (192,) * 4, *, level: int = 3,
                 mult: int = 2, ff_channel: int | None = None, dropout: float = 0.5, stem: str = "patchify",
                 patch_size: int = 4, stride: int = 2, in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = WaveMix.traits_for(dims=dims, level=level, stem=stem, patch_size=patch_size,
                                         stride=stride)
        if len(depths) != len(dims) or len(set(dims)) != 1:
            raise ValueError(f"WaveMix's block groups share one width: depths and dims need one entry per group and "
                             f"equal dims; got {depths} and {dims}")
        dim = dims[0]
        if stem == "patchify":
            self.stem = nn.Sequential(nn.Conv2d(in_chans, dim // 4, 3, 1, 1), nn.Conv2d(dim // 4, dim // 2, 3, 1, 1),
                                      nn.Conv2d(dim // 2, dim, patch_size, patch_size), nn.GELU(), nn.BatchNorm2d(dim))
            reduction = patch_size
        elif stem == "strided":
            self.stem = nn.Sequential(nn.Conv2d(in_chans, dim // 2, 3, stride, 1),
                                      nn.Conv2d(dim // 2, dim, 3, stride, 1))
            reduction = stride * stride
        else:
            raise ValueError(f"stem must be 'patchify' or 'strided'; got {stem!r}")
        self.build_stages(depths, dims, drop_path_rate, downsample=lambda i: None, stem_reduction=reduction,
                          block=lambda i, j, dp: WaveMixBlock(dim, level, mult, ff_channel, dropout, dp))
        for info in self.feature_info:  # isotropic: every group at the stem's resolution
            info["reduction"] = reduction
        self.head = ClassifierHead(dim, num_classes, drop_rate=drop_rate)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        h, w = x.shape[-2:]
        m = self.traits.input_multiple
        if h % m or w % m:
            raise ValueError(f"{self.model_name} needs H and W multiples of {m}; got {h}x{w}")


def _group_of(index: int, depths: list[int]) -> tuple[int, int]:
    for i, d in enumerate(depths):
        if index < d:
            return i, index
        index -= d
    raise KeyError(f"official block {index} beyond the model's {sum(depths)} blocks")


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """pranavphoenix/WaveMix keys -> ours: conv -> stem, layers.i -> stages.g.blocks.j.mixer (block i of the groups),
    pool.2 -> head.fc."""
    depths = [len(stage.blocks) for stage in model.stages]
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^conv\.", "stem.", k)
        m = re.match(r"^layers\.(\d+)\.", k)
        if m:
            i, j = _group_of(int(m.group(1)), depths)
            k = f"stages.{i}.blocks.{j}.mixer." + k[m.end():]
        k = re.sub(r"^pool\.2\.", "head.fc.", k)
        out[k] = v
    return out


# -- variants ----------------------------------------------------------------------------------------------------
_SRC = ("pranavphoenix/WaveMix@ba3d1b4 Saved_weights/ImageNet/{file} (configuration; the file name gives the "
        "rounded params and the top-1); params: the exact count of that official constructor; the repository "
        "states no input size or MACs")
_NOTE = ("MACs: not published in the official repository (the paper's figures are unverified), so the card has "
         "none; the ImageNet input size is not stated either: 256x256 is the README example's (a multiple of 64, "
         "which the level-4 strided configuration needs)")

register_family(
    "wavemix", WaveMix, paper=Paper("WaveMix: A Resource-efficient Neural Network for Image Analysis", "2205.14375",
                                    "pranavphoenix/WaveMix"),
    spec=ArchSpec(depths="depths", widths="dims", width_quantum=8, input_step=32), converter=convert_official,
    card=Card(input_size=(3, 256, 256), notes=_NOTE),
    variants={
        "wavemix_192_16_l3": variant(depths=(4, 4, 4, 4), dims=(192,) * 4, level=3, card=Card(
            params_m=27.858, macs_g=None, top1=75.06,
            source=_SRC.format(file="wavemix_28M_75.06.py"))),
        "wavemix_192_16_l1": variant(depths=(4, 4, 4, 4), dims=(192,) * 4, level=1, card=Card(
            params_m=12.495, macs_g=None, top1=71.18,
            source=_SRC.format(file="wavemix_12M_71.18.py"))),
        "wavemix_256_16_l3": variant(depths=(4, 4, 4, 4), dims=(256,) * 4, level=3, card=Card(
            params_m=49.417, macs_g=None, top1=73.03,
            source=_SRC.format(file="wavemix_73.py"))),
        "wavemix_256_16_l4": variant(depths=(4, 4, 4, 4), dims=(256,) * 4, level=4, stem="strided", card=Card(
            params_m=62.765, macs_g=None, top1=70.42,
            source=_SRC.format(file="wavemix_level4_imagenet_70.42.py"))),
    })
