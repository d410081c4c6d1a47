"""InceptionNeXt (Yu et al., "InceptionNeXt: When Inception Meets ConvNeXt", arXiv 2303.16900).

ConvNeXt's 7x7 depthwise conv is slow for its FLOPs because of memory access. InceptionNeXt keeps most channels
untouched and gives small groups a 3x3 square kernel and 1x11 / 11x1 band kernels (the MetaNeXt block with an
Inception depthwise token mixer), with BatchNorm and a 1x1-conv MLP. The head is an MLP (ratio 3).

State-dict keys are timm's, which are also the official repository's.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers import (
    ConvMlp,
    InceptionDWConv2d,
    LayerNorm,
    MlpHead,
    drop_path_or_identity,
    init_trunc_normal,
    layer_scale,
    layer_scale_parameter,
)
from ..layers.reparam import fuse_bn_before_conv_
from .base import ConvScopeModel, norm_conv_downsample, patchify_stem
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy


class MetaNeXtBlock(nn.Module):
    """x + DropPath(gamma * ConvMlp(BN(token_mixer(x))))."""

    # the stage's channels for structured pruning (convscope.deploy.prune): (attribute, role) pairs
    prune_stream = (("token_mixer", "split"), ("norm", "norm"), ("mlp.fc1", "in"), ("mlp.fc2", "out"),
                    ("gamma", "scale"))

    def __init__(self, dim: int, token_mixer: type[nn.Module] = InceptionDWConv2d, mixer_kwargs: dict | None = None,
                 mlp_ratio: float = 4, ls_init_value: float = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        self.token_mixer = token_mixer(dim, **(mixer_kwargs or {}))
        self.norm: nn.Module = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.gamma = layer_scale_parameter(dim, ls_init_value)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.token_mixer(x)))
        return x + self.drop_path(layer_scale(y, self.gamma))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorm into the MLP's first 1x1 conv (no padding, so exact); the stem's conv -> BN and
        the downsampling BN -> 2x2 conv are plain nn.Sequential pairs that `reparameterize_` folds itself."""
        if isinstance(self.norm, nn.BatchNorm2d):
            fuse_bn_before_conv_(self.norm, self.mlp.fc1)
            self.norm = nn.Identity()


class InceptionNeXt(ConvScopeModel):
    """MetaNeXt with Inception depthwise mixers: stem (4x4/4 conv, BN) -> four stages, stages 2-4 opened by
    BN + 2x2/2 conv -> global average pool -> MLP head (Linear 3C, GELU, LN, Linear)."""

    @classmethod
    def traits_for(cls, *, dims: Sequence[int]) -> ModelTraits:
        return hierarchy(dims, reparameterizable=True)  # the stem's and downsamplings' BatchNorms fold

    def __init__(self, depths: tuple[int, ...] = (3, 3, 9, 3), dims: tuple[int, ...] = (96, 192, 384, 768), *,
                 in_chans: int = 3, num_classes: int = 1000, mlp_ratios: tuple[float, ...] = (4, 4, 4, 3),
                 band_kernel_size: int = 11, branch_ratio: float = 0.125, square_kernel_size: int = 3,
                 ls_init_value: float = 1e-6, head_mlp_ratio: float = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = InceptionNeXt.traits_for(dims=dims)
        mixer_kwargs = dict(square_kernel_size=square_kernel_size, band_kernel_size=band_kernel_size,
                            branch_ratio=branch_ratio)
        self.stem = patchify_stem(in_chans, dims[0], nn.BatchNorm2d)
        self.build_stages(
            depths, dims, drop_path_rate,
            downsample=lambda i: norm_conv_downsample(dims[i - 1], dims[i], nn.BatchNorm2d),
            block=lambda i, j, dp: MetaNeXtBlock(dims[i], InceptionDWConv2d, mixer_kwargs, mlp_ratios[i],
                                                 ls_init_value, dp))
        self.head = MlpHead(dims[-1], num_classes, mlp_ratio=head_mlp_ratio, act_layer=nn.GELU,
                            norm_layer=LayerNorm, drop=drop_rate)
        init_trunc_normal(self)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x.mean((2, 3)), pre_logits=pre_logits)


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """The official repository already uses these keys (timm kept them)."""
    return dict(state_dict)


_SRC = ("top-1 and atto's MACs: sail-sg/inceptionnext README @3f9769c; params and MACs: timm result tables "
        "@aa4b585, the exact counts the README rounds (tiny 28M / 4.2G)")

register_family(
    "inception_next", InceptionNeXt, paper=Paper("InceptionNeXt: When Inception Meets ConvNeXt", "2303.16900",
                                                 "sail-sg/inceptionnext"),
    spec=ArchSpec(depths="depths", widths="dims"),  # multiples of 8 keep the 1/8 and 1/4 branch ratios exact
    converter=convert_official, timm=True, card=Card(source=_SRC),
    variants={  # aliases: the official constructors' names
        "inception_next_atto": variant(
            depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), band_kernel_size=9, branch_ratio=0.25,
            aliases=("inceptionnext_atto",),
            card=Card(params_m=4.16, macs_g=0.51, top1=75.3, drop_path_rate=0.1)),
        "inception_next_tiny": variant(
            depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), aliases=("inceptionnext_tiny",),
            card=Card(params_m=28.06, macs_g=4.19, top1=82.3, drop_path_rate=0.1)),
        "inception_next_small": variant(
            depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), aliases=("inceptionnext_small",),
            card=Card(params_m=49.37, macs_g=8.36, top1=83.5, drop_path_rate=0.3)),
        "inception_next_base": variant(
            depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), aliases=("inceptionnext_base",),
            card=Card(params_m=86.67, macs_g=14.85, top1=84.0, drop_path_rate=0.4, crop_pct=0.95)),
        "inception_next_base_384": variant(
            depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), aliases=("inceptionnext_base_384",),
            card=Card(params_m=86.67, macs_g=43.64, top1=85.2, input_size=(3, 384, 384), crop_pct=1.0,
                      timm_name="inception_next_base", notes="inception_next_base fine-tuned at 384")),
    })
