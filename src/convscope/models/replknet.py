"""RepLKNet (Ding et al., "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs",
arXiv 2203.06717).

A few very large depthwise kernels (31, 29, 27, 13 per stage) give a ConvNet a Transformer-like receptive field.
Each large kernel is trained with a parallel 5x5 kernel that is merged into it afterwards (structural
re-parameterisation), and sits in a RepLK block between 1x1 convs with a shortcut; every RepLK block is followed
by a ConvFFN. All convs are conv+BN; `reparameterize_model` folds every BatchNorm beside a conv, so the deploy
form keeps only the head's BatchNorm (applied to the map before global pooling, where no conv is adjacent).

Keys follow the official repository's where it has them (`stem.i.conv`, `pw1.bn`, ...); the large-kernel conv
is `large_kernel.lk_conv` / `large_kernel.branches.0` (official `lkb_origin` / `small_conv`), transitions are
each stage's `downsample`, and the head is `head.norm` / `head.fc`. `load_checkpoint(..., source="official")`
maps the official keys, including the official deploy form (`structural_reparam()`, optionally
`deep_fuse_BN()`), which `create_model(name, deploy=True, pretrained=...)` loads.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn

from ..layers import ClassifierHead, ConvBnAct, ReparamLargeKernelConv, drop_path_or_identity
from ..layers.reparam import fuse_bn_before_conv_
from .base import ConvScopeModel
from .registry import INCEPTION_MEAN, INCEPTION_STD, ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy


class RepLKBlock(nn.Module):
    """x + DropPath(pw2(ReLU(LK(pw1(BN(x)))))): pw1 is 1x1 conv-BN-ReLU to `dw_channels`, LK the
    re-parameterised large-kernel depthwise conv, pw2 1x1 conv-BN back to `dim`."""

    def __init__(self, dim: int, dw_channels: int, kernel_size: int, small_kernel: int | None,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.prelkb_bn: nn.Module = nn.BatchNorm2d(dim)
        self.pw1 = ConvBnAct(dim, dw_channels, 1, act_layer=nn.ReLU)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, kernel_size, small_kernel)
        self.lk_nonlinear = nn.ReLU()
        self.pw2 = ConvBnAct(dw_channels, dim, 1)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(self.prelkb_bn(x)))))
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        for m in (self.pw1, self.large_kernel, self.pw2):
            m.reparameterize()
        if isinstance(self.prelkb_bn, nn.BatchNorm2d):  # BN -> 1x1 conv: no padding, so the fold is exact
            fuse_bn_before_conv_(self.prelkb_bn, self.pw1.conv)
            self.prelkb_bn = nn.Identity()


class ConvFFN(nn.Module):
    """x + DropPath(pw2(GELU(pw1(BN(x))))), 1x1 conv-BN layers with a `hidden`-channel middle."""

    def __init__(self, dim: int, hidden: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.preffn_bn: nn.Module = nn.BatchNorm2d(dim)
        self.pw1 = ConvBnAct(dim, hidden, 1, act_layer=nn.GELU)
        self.pw2 = ConvBnAct(hidden, dim, 1)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.pw2(self.pw1(self.preffn_bn(x))))

    @torch.no_grad()
    def reparameterize(self) -> None:
        self.pw1.reparameterize()
        self.pw2.reparameterize()
        if isinstance(self.preffn_bn, nn.BatchNorm2d):
            fuse_bn_before_conv_(self.preffn_bn, self.pw1.conv)
            self.preffn_bn = nn.Identity()


class RepLKNet(ConvScopeModel):
    """RepLKNet: stem (3x3/2 conv, dw 3x3, 1x1, dw 3x3/2; each conv-BN-ReLU) -> four stages of
    (RepLK block, ConvFFN) pairs, stages 2-4 opened by a transition (1x1 conv-BN-ReLU, dw 3x3/2 conv-BN-ReLU)
    -> BN -> global average pool -> Linear."""

    @classmethod
    def traits_for(cls, *, channels: Sequence[int]) -> ModelTraits:
        return hierarchy(channels, reparameterizable=True)  # large kernels merge their small-kernel branches

    def __init__(self, large_kernel_sizes: tuple[int, ...] = (31, 29, 27, 13),
                 layers: tuple[int, ...] = (2, 2, 18, 2), channels: tuple[int, ...] = (128, 256, 512, 1024),
                 small_kernel: int | None = 5,
                 dw_ratio: float = 1, ffn_ratio: float = 4, *, in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = RepLKNet.traits_for(channels=channels)
        c0 = channels[0]
        self.stem = nn.Sequential(
            ConvBnAct(in_chans, c0, 3, stride=2, act_layer=nn.ReLU),
            ConvBnAct(c0, c0, 3, groups=c0, act_layer=nn.ReLU),
            ConvBnAct(c0, c0, 1, act_layer=nn.ReLU),
            ConvBnAct(c0, c0, 3, stride=2, groups=c0, act_layer=nn.ReLU),
        )
        self.build_stages(
            layers, channels, drop_path_rate,
            downsample=lambda i: nn.Sequential(  # the official "transition"
                ConvBnAct(channels[i - 1], channels[i], 1, act_layer=nn.ReLU),
                ConvBnAct(channels[i], channels[i], 3, stride=2, groups=channels[i], act_layer=nn.ReLU)),
            # a layer is a (RepLK block, ConvFFN) pair with the same drop-path rate, as in the official code
            block=lambda i, j, dp: (
                RepLKBlock(channels[i], int(channels[i] * dw_ratio), large_kernel_sizes[i], small_kernel, dp),
                ConvFFN(channels[i], int(channels[i] * ffn_ratio), dp)))
        self.head = ClassifierHead(channels[-1], num_classes, norm_layer=nn.BatchNorm2d, drop_rate=drop_rate,
                                   norm_first=True)


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """DingXiaoH/RepLKNet-pytorch keys -> ours, for the train form and the official deploy forms
    (`lkb_reparam` after structural_reparam(); `conv.bias` without `bn` after deep_fuse_BN())."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^transitions\.(\d+)\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.", k)
        k = k.replace(".large_kernel.lkb_origin.", ".large_kernel.lk_conv.")
        k = k.replace(".large_kernel.small_conv.", ".large_kernel.branches.0.")
        k = k.replace(".large_kernel.lkb_reparam.", ".large_kernel.lk_conv.conv.")
        k = re.sub(r"^norm\.", "head.norm.", k)
        k = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", k)
        out[k] = v
    return out


def _dw_quantum(arch, i: int) -> int:
    """Widths whose dw_ratio expansion stays a whole multiple of 8 (XL's 1.5 needs multiples of 16)."""
    return 8 * Fraction(arch.get("dw_ratio", 1)).limit_denominator(64).denominator


_SRC = ("top-1, MACs (README 'FLOPs') and resolution: DingXiaoH/RepLKNet-pytorch README @b76808a; params: the "
        "official replknet.py @b76808a counted in its train form (mmpretrain's table rounds them: 79.86 / "
        "172.67 / 335.44); drop path: the README's training commands")

register_family(
    "replknet", RepLKNet, paper=Paper("Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs",
                                      "2203.06717", "DingXiaoH/RepLKNet-pytorch"),
    spec=ArchSpec(depths="layers", widths="channels", width_quantum=_dw_quantum), converter=convert_official,
    card=Card(source=_SRC, macs_form="deploy"),
    variants={
        "replknet_31b": variant(
            large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2), channels=(128, 256, 512, 1024),
            card=Card(params_m=79.864168, macs_g=15.3, top1=83.5, drop_path_rate=0.5,
                      notes="ImageNet-1k at 224; the 384 fine-tune reaches 84.8 (45.1G MACs), ImageNet-22k -> 1k "
                            "85.2")),
        "replknet_31l": variant(
            large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2), channels=(192, 384, 768, 1536),
            card=Card(params_m=172.671016, macs_g=96.0, top1=86.6, input_size=(3, 384, 384), crop_pct=1.0,
                      pretrain="ImageNet-22k", drop_path_rate=0.3,
                      notes="ImageNet-22k pre-trained, fine-tuned on 1k at 384")),
        "replknet_xl": variant(
            large_kernel_sizes=(27, 27, 27, 13), layers=(2, 2, 18, 2), channels=(256, 512, 1024, 2048),
            small_kernel=None, dw_ratio=1.5,
            card=Card(params_m=335.435752, macs_g=128.7, top1=87.8, input_size=(3, 320, 320), mean=INCEPTION_MEAN,
                      std=INCEPTION_STD, pretrain="MegData-73M",
                      notes="MegData-73M pre-trained, fine-tuned on ImageNet-1k at 320 with mean = std = 0.5; no "
                            "small kernel; the README gives no drop-path rate for it")),
    })
