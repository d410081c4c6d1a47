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

import torch
from torch import nn

from ..layers import ClassifierHead, ConvBnAct, ReparamLargeKernelConv, drop_path_or_identity, drop_path_rates
from ..layers.reparam import fuse_bn_before_conv_
from .base import ConvScopeModel, Stage
from .registry import INCEPTION_MEAN, INCEPTION_STD, ModelCard, register_model, register_official_converter


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

    def __init__(self, large_kernel_sizes: tuple[int, ...] = (31, 29, 27, 13),
                 layers: tuple[int, ...] = (2, 2, 18, 2), channels: tuple[int, ...] = (128, 256, 512, 1024),
                 small_kernel: int | None = 5,
                 dw_ratio: float = 1, ffn_ratio: float = 4, *, in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        c0 = channels[0]
        self.stem = nn.Sequential(
            ConvBnAct(in_chans, c0, 3, stride=2, act_layer=nn.ReLU),
            ConvBnAct(c0, c0, 3, groups=c0, act_layer=nn.ReLU),
            ConvBnAct(c0, c0, 1, act_layer=nn.ReLU),
            ConvBnAct(c0, c0, 3, stride=2, groups=c0, act_layer=nn.ReLU),
        )
        dpr = drop_path_rates(drop_path_rate, layers)
        stages = []
        for i, (depth, dim, k) in enumerate(zip(layers, channels, large_kernel_sizes)):
            transition = None if i == 0 else nn.Sequential(
                ConvBnAct(channels[i - 1], dim, 1, act_layer=nn.ReLU),
                ConvBnAct(dim, dim, 3, stride=2, groups=dim, act_layer=nn.ReLU),
            )
            blocks = []
            for j in range(depth):  # the official code gives both blocks of a pair the same drop-path rate
                blocks += [RepLKBlock(dim, int(dim * dw_ratio), k, small_kernel, dpr[i][j]),
                           ConvFFN(dim, int(dim * ffn_ratio), dpr[i][j])]
            stages.append(Stage(transition, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels[-1]
        self.head = ClassifierHead(channels[-1], num_classes, norm_layer=nn.BatchNorm2d, drop_rate=drop_rate,
                                   norm_first=True)


_PAPER = dict(family="replknet", paper="Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs",
              arxiv="2203.06717", repo="DingXiaoH/RepLKNet-pytorch")
_SRC = ("top-1, MACs (README 'FLOPs') and resolution: DingXiaoH/RepLKNet-pytorch README @b76808a; params: the "
        "official replknet.py @b76808a counted in its train form (mmpretrain's table rounds them: 79.86 / "
        "172.67 / 335.44); drop path: the README's training commands")

_ARCHS: dict[str, tuple[dict, dict]] = {
    "replknet_31b": (
        dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2), channels=(128, 256, 512, 1024)),
        dict(params_m=79.864168, macs_g=15.3, top1=83.5, drop_path_rate=0.5,
             notes="ImageNet-1k at 224; the 384 fine-tune reaches 84.8 (45.1G MACs), ImageNet-22k -> 1k 85.2")),
    "replknet_31l": (
        dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2), channels=(192, 384, 768, 1536)),
        dict(params_m=172.671016, macs_g=96.0, top1=86.6, input_size=(3, 384, 384), crop_pct=1.0,
             pretrain="ImageNet-22k", drop_path_rate=0.3,
             notes="ImageNet-22k pre-trained, fine-tuned on 1k at 384")),
    "replknet_xl": (
        dict(large_kernel_sizes=(27, 27, 27, 13), layers=(2, 2, 18, 2), channels=(256, 512, 1024, 2048),
             small_kernel=None, dw_ratio=1.5),
        dict(params_m=335.435752, macs_g=128.7, top1=87.8, input_size=(3, 320, 320), mean=INCEPTION_MEAN,
             std=INCEPTION_STD, pretrain="MegData-73M",
             notes="MegData-73M pre-trained, fine-tuned on ImageNet-1k at 320 with mean = std = 0.5; no small "
                   "kernel; the README gives no drop-path rate for it")),
}


def _register(name: str, arch: dict, card: dict) -> None:
    def build(**kwargs) -> RepLKNet:
        return RepLKNet(**{**arch, **kwargs})

    build.__name__ = build.__qualname__ = name
    register_model(ModelCard(name=name, source=_SRC, macs_form="deploy", **_PAPER, **card))(build)


for _name, (_arch, _card) in _ARCHS.items():
    _register(_name, _arch, _card)


@register_official_converter("replknet")
def _convert_official(state_dict: dict, model: nn.Module) -> dict:
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
