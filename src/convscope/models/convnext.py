"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", arXiv 2201.03545) and ConvNeXt V2 (Woo et al., arXiv 2301.00808).

A ResNet modernised step by step towards a Swin Transformer: a 4x4 "patchify" stem, an inverted bottleneck with
a 7x7 depthwise conv in front, LayerNorm, GELU, layer scale, and separate 2x2 downsampling layers. V2 replaces
layer scale with Global Response Normalization inside the MLP.

State-dict keys are timm's, so timm checkpoints load directly; `load_checkpoint(..., source="official")` maps the
official repositories' keys. The small variants (atto ... nano) use 1x1 convs for the MLP, as timm does.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ..layers import (
    ClassifierHead,
    GlobalResponseNormMlp,
    LayerNorm,
    LayerNorm2d,
    Mlp,
    drop_path_or_identity,
    init_trunc_normal,
    layer_scale,
    layer_scale_parameter,
    scale_classifier_,
)
from .base import ConvScopeModel, norm_conv_downsample, patchify_stem
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy


class ConvNeXtBlock(nn.Module):
    """x + DropPath(gamma * MLP(LN(dwconv7x7(x)))), the MLP being Linear(4C) -> GELU [-> GRN] -> Linear(C).

    With `conv_mlp=True` the norm and MLP run on the NCHW map (LayerNorm2d, 1x1 convs) instead of permuting to
    channels-last for Linear layers; the arithmetic is the same.
    """

    # the stage's channels for structured pruning (convscope.deploy.prune): (attribute, role) pairs
    prune_stream = (("conv_dw", "dw"), ("norm", "norm"), ("mlp.fc1", "in"), ("mlp.fc2", "out"), ("gamma", "scale"))

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4, ls_init_value: float | None = 1e-6,
                 conv_mlp: bool = False, use_grn: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        self.channels_last = not conv_mlp
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim) if conv_mlp else LayerNorm(dim)
        mlp_layer = GlobalResponseNormMlp if use_grn else Mlp
        self.mlp = mlp_layer(dim, int(mlp_ratio * dim), act_layer=nn.GELU, use_conv=conv_mlp)
        self.gamma = layer_scale_parameter(dim, ls_init_value)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if self.channels_last:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        else:
            x = self.mlp(self.norm(x))
        return shortcut + self.drop_path(layer_scale(x, self.gamma))


class ConvNeXt(ConvScopeModel):
    """ConvNeXt: stem (4x4/4 conv, LN) -> four stages of ConvNeXt blocks, stages 2-4 opened by LN + 2x2/2 conv
    -> global average pool -> LN -> Linear."""

    @classmethod
    def traits_for(cls, *, dims: Sequence[int]) -> ModelTraits:
        return hierarchy(dims)

    def __init__(self, depths: tuple[int, ...] = (3, 3, 9, 3), dims: tuple[int, ...] = (96, 192, 384, 768), *,
                 in_chans: int = 3, num_classes: int = 1000, kernel_size: int = 7, mlp_ratio: float = 4,
                 ls_init_value: float | None = 1e-6, conv_mlp: bool = False, use_grn: bool = False,
                 head_init_scale: float = 1.0, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = ConvNeXt.traits_for(dims=dims)
        self.stem = patchify_stem(in_chans, dims[0], LayerNorm2d)
        self.build_stages(
            depths, dims, drop_path_rate,
            downsample=lambda i: norm_conv_downsample(dims[i - 1], dims[i], LayerNorm2d),
            block=lambda i, j, dp: ConvNeXtBlock(dims[i], kernel_size, mlp_ratio, ls_init_value, conv_mlp, use_grn,
                                                 dp))
        self.head = ClassifierHead(dims[-1], num_classes, norm_layer=LayerNorm, drop_rate=drop_rate)
        init_trunc_normal(self)
        scale_classifier_(self.head.fc, head_init_scale)


def official_layout_key(k: str) -> str:
    """The skeleton of the official ConvNeXt code's keys, which HorNet and UniRepLKNet kept, mapped to ours:
    downsample_layers.0 is the stem, downsample_layers.{i} opens stage i, stages.{i}.{j} is its block j, and the
    final norm and linear head become head.norm and head.fc. Block-internal names are left to each family."""
    k = re.sub(r"^downsample_layers\.0\.", "stem.", k)
    k = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", k)
    k = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
    k = re.sub(r"^norm\.", "head.norm.", k)
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", k)


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """facebookresearch/ConvNeXt(-V2) keys -> ours (timm's)."""
    own = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        k = official_layout_key(k)
        k = k.replace(".dwconv.", ".conv_dw.").replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
        k = k.replace(".grn.gamma", ".mlp.grn.weight").replace(".grn.beta", ".mlp.grn.bias")
        if k in own and v.shape != own[k].shape and v.numel() == own[k].numel():
            v = v.reshape(own[k].shape)  # GRN (1,1,1,C) -> (C,); Linear -> 1x1 conv for the small variants
        out[k] = v
    return out


# -- variants ----------------------------------------------------------------------------------------------------
_SRC_V1 = ("top-1: facebookresearch/ConvNeXt README @048efce (IN-1k, 224); params and MACs: timm "
           "results-imagenet.csv and benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv @aa4b585, the exact counts "
           "of the official weights that the README rounds (T 28M / 4.5G)")
_SRC_V1_TIMM = ("timm's variant, not in the paper: params, MACs and top-1 from timm results-imagenet.csv and "
                "benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv @aa4b585")
_SRC_V2 = ("top-1: facebookresearch/ConvNeXt-V2 README @2553895 (IN-1k fine-tuned, 224); params and MACs: timm "
           "result tables @aa4b585, the exact counts the README rounds (T 28.6M / 4.47G)")
_SRC_V2_TIMM = "timm's variant, not in the paper: params and MACs from timm result tables @aa4b585"
_TIMM_REPO = "huggingface/pytorch-image-models"
# timm builds the small variants (atto ... nano) with 1x1-conv MLPs: conv_mlp=True.

register_family(
    "convnext", ConvNeXt, paper=Paper("A ConvNet for the 2020s", "2201.03545", "facebookresearch/ConvNeXt"),
    spec=ArchSpec(depths="depths", widths="dims"), converter=convert_official, timm=True,
    variants={
        "convnext_atto": variant(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True, card=Card(
            params_m=3.70, macs_g=0.55, top1=75.7, repo=_TIMM_REPO, source=_SRC_V1_TIMM)),
        "convnext_femto": variant(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True, card=Card(
            params_m=5.22, macs_g=0.79, top1=77.5, repo=_TIMM_REPO, source=_SRC_V1_TIMM)),
        "convnext_pico": variant(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True, card=Card(
            params_m=9.05, macs_g=1.37, top1=79.5, repo=_TIMM_REPO, source=_SRC_V1_TIMM)),
        "convnext_nano": variant(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True, card=Card(
            params_m=15.59, macs_g=2.46, top1=80.8, repo=_TIMM_REPO, source=_SRC_V1_TIMM)),
        "convnext_tiny": variant(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), card=Card(
            params_m=28.59, macs_g=4.47, top1=82.1, drop_path_rate=0.1, source=_SRC_V1)),
        "convnext_small": variant(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), card=Card(
            params_m=50.22, macs_g=8.71, top1=83.1, drop_path_rate=0.4, source=_SRC_V1)),
        "convnext_base": variant(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), card=Card(
            params_m=88.59, macs_g=15.38, top1=83.8, drop_path_rate=0.5, source=_SRC_V1)),
        "convnext_large": variant(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), card=Card(
            params_m=197.77, macs_g=34.40, top1=84.3, drop_path_rate=0.5, source=_SRC_V1)),
        "convnext_xlarge": variant(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048), card=Card(
            params_m=350.20, macs_g=60.98, top1=87.0, pretrain="ImageNet-22k", drop_path_rate=0.2, source=_SRC_V1,
            notes="released only as ImageNet-22k pre-trained, fine-tuned on 1k")),
    })

register_family(
    "convnextv2", ConvNeXt, paper=Paper("ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
                                        "2301.00808", "facebookresearch/ConvNeXt-V2"),
    spec=ArchSpec(depths="depths", widths="dims"), converter=convert_official, timm=True,
    arch=dict(use_grn=True, ls_init_value=None),  # V2: GRN in the MLP instead of layer scale
    variants={
        "convnextv2_atto": variant(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True, card=Card(
            params_m=3.71, macs_g=0.55, top1=76.7, drop_path_rate=0.1, source=_SRC_V2)),
        "convnextv2_femto": variant(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True, card=Card(
            params_m=5.23, macs_g=0.79, top1=78.5, source=_SRC_V2)),
        "convnextv2_pico": variant(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True, card=Card(
            params_m=9.07, macs_g=1.37, top1=80.3, source=_SRC_V2)),
        "convnextv2_nano": variant(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True, card=Card(
            params_m=15.62, macs_g=2.46, top1=81.9, source=_SRC_V2)),
        "convnextv2_tiny": variant(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), card=Card(
            params_m=28.64, macs_g=4.47, top1=83.0, drop_path_rate=0.2, source=_SRC_V2)),
        "convnextv2_small": variant(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), card=Card(
            params_m=50.32, macs_g=8.71, repo=_TIMM_REPO, source=_SRC_V2_TIMM)),
        "convnextv2_base": variant(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), card=Card(
            params_m=88.72, macs_g=15.38, top1=84.9, drop_path_rate=0.1, source=_SRC_V2)),
        "convnextv2_large": variant(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), card=Card(
            params_m=197.96, macs_g=34.4, top1=85.8, source=_SRC_V2)),
        "convnextv2_huge": variant(depths=(3, 3, 27, 3), dims=(352, 704, 1408, 2816), card=Card(
            params_m=660.29, macs_g=115.0, top1=86.3, source=_SRC_V2)),
    })
