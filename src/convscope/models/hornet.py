"""HorNet (Rao et al., "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions",
NeurIPS 2022, arXiv 2207.14284).

A ConvNeXt-shaped network (4x4 patchify stem, LN + 2x2 downsampling, layer scale, GELU MLP) whose token mixer
is the recursive gated convolution gnConv, of order 2, 3, 4, 5 in the four stages. The 7x7 models mix space
with a 7x7 depthwise conv; the GF models use the global-local filter in stages 3 and 4, whose frequency-domain
weights are sized for one input resolution and resized for others.

timm does not carry HorNet: the state-dict keys are convscope's own, and
`load_checkpoint(..., source="official")` maps those of raoyongming/HorNet.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

from ..layers import (ClassifierHead, GlobalLocalFilter, GnConv, LayerNorm, LayerNorm2d, Mlp, drop_path_or_identity,
                      drop_path_rates, init_trunc_normal, scale_classifier_)
from .base import ConvScopeModel, Stage
from .convnext import official_layout_key
from .registry import ModelCard, register_model, register_official_converter


class HorNetBlock(nn.Module):
    """x = x + DropPath(gamma1 * gnConv(LN(x))); x = x + DropPath(gamma2 * MLP(LN(x))), the MLP being
    Linear(4C) -> GELU -> Linear(C) on channels-last tokens, as in ConvNeXt."""

    def __init__(self, dim: int, order: int, spatial_mixer: Callable[[int], nn.Module] | None = None,
                 scale: float = 1 / 3, ls_init_value: float = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.gnconv = GnConv(dim, order, spatial_mixer=spatial_mixer, scale=scale)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim, act_layer=nn.GELU)
        self.gamma1 = nn.Parameter(torch.full((dim,), ls_init_value))
        self.gamma2 = nn.Parameter(torch.full((dim,), ls_init_value))
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1.view(-1, 1, 1) * self.gnconv(self.norm1(x)))
        y = self.gamma2 * self.mlp(self.norm2(x.permute(0, 2, 3, 1)))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class HorNet(ConvScopeModel):
    """HorNet: stem (4x4/4 conv, LN) -> four stages of HorNet blocks with gnConv of order `orders[i]`, stages
    2-4 opened by LN + 2x2/2 conv -> global average pool -> LN -> Linear.

    gf_sizes: per stage, None for the 7x7 depthwise conv, or the (h, w) spectrum size for which the stage's
        global-local filter is built (stage map H x W gives a spectrum H x (W//2 + 1)).
    """

    def __init__(self, depths: Sequence[int] = (2, 3, 18, 2), dims: Sequence[int] = (64, 128, 256, 512),
                 orders: Sequence[int] = (2, 3, 4, 5),
                 gf_sizes: Sequence[tuple[int, int] | None] = (None, None, None, None), *, in_chans: int = 3,
                 num_classes: int = 1000, scale: float = 1 / 3, ls_init_value: float = 1e-6,
                 head_init_scale: float = 1.0, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        dpr = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i, (depth, dim, order, gf) in enumerate(zip(depths, dims, orders, gf_sizes)):
            downsample = None if i == 0 else nn.Sequential(LayerNorm2d(dims[i - 1]),
                                                           nn.Conv2d(dims[i - 1], dim, 2, stride=2))
            mixer = None if gf is None else partial(GlobalLocalFilter, h=gf[0], w=gf[1])
            blocks = [HorNetBlock(dim, order, mixer, scale, ls_init_value, dpr[i][j]) for j in range(depth)]
            stages.append(Stage(downsample, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]
        self.head = ClassifierHead(dims[-1], num_classes, norm_layer=LayerNorm, drop_rate=drop_rate)
        init_trunc_normal(self)
        scale_classifier_(self.head.fc, head_init_scale)


# -- variants ----------------------------------------------------------------------------------------------------
_PAPER = dict(family="hornet", paper="HorNet: Efficient High-Order Spatial Interactions with Recursive Gated "
              "Convolutions", arxiv="2207.14284", repo="raoyongming/HorNet",
              macs_convention="fvcore_manual_cf_ln")  # the official channels-first LayerNorm is written out

_GF_224 = (None, None, (14, 8), (7, 4))  # the spectra of the 14x14 and 7x7 maps of a 224x224 input
_GF_384 = (None, None, (24, 13), (12, 7))  # of the 24x24 and 12x12 maps of a 384x384 input

_MACS = ("MACs: the official calc_flops.py (fvcore: conv and linear MACs, nn.LayerNorm 5/element, "
         "rfft2/irfft2 N*C*ceil(log2 N)) run on hornet.py @ac9e210 with a 1000-class head, rounded by the README "
         "to {readme}G")
_SRC_1K = ("top-1 and drop path: raoyongming/HorNet README and TRAINING.md @ac9e210 (IN-1k, 224); params: "
           "mmpretrain configs/hornet/README.md @00e2564, the exact count the README rounds ({readme_p}M) and "
           "that hornet.py gives; " + _MACS)
_SRC_22K = ("drop path: raoyongming/HorNet TRAINING.md @ac9e210 ({stage}); params: mmpretrain "
            "configs/hornet/README.md @00e2564, the count that hornet.py gives with a 1000-class head (the "
            "README's {readme_p}M includes the larger ImageNet-22k head); no IN-1k top-1 in the README; " + _MACS)
_SRC_L384 = ("drop path: raoyongming/HorNet TRAINING.md @ac9e210 (its 384 fine-tuning command, which names "
             "ImageNet-1k data while the README says these weights were fine-tuned on ImageNet-22k); params: "
             "hornet.py @ac9e210 counted with a 1000-class head (the README's 216M includes the ImageNet-22k "
             "head; mmpretrain's 201.23M comes from its filter sizes (24, 12) / (13, 7), not the official "
             "(24, 13) / (12, 7)); no IN-1k top-1 in the README; " + _MACS)
_GF_NOTE = ("the global filters' frequency-domain weights are sized for {side}x{side} inputs (spectra {s3} and "
            "{s4} in stages 3 and 4) and resized bilinearly for other sizes")
_GF_NOTE_224 = _GF_NOTE.format(side=224, s3=_GF_224[2], s4=_GF_224[3])
_22K = dict(pretrain="ImageNet-22k")
_22K_NOTE = ("released as ImageNet-22k pre-trained weights (with a 22k head); built here with a 1000-class head, "
             "whose count the card gives")

_ARCHS: dict[str, tuple[dict, dict]] = {}
for _size, _base, _dpr, _top1_7, _top1_gf, _p7, _pgf, _m7, _mgf, _readme in [
        ("tiny", 64, 0.2, 82.8, 83.0, 22.41, 22.99, 3.98, 3.91, ("22", "4.0", "23", "3.9")),
        ("small", 96, 0.4, 83.8, 84.0, 49.53, 50.40, 8.83, 8.73, ("50", "8.8", "50", "8.7")),
        ("base", 128, 0.5, 84.2, 84.3, 87.26, 88.42, 15.58, 15.46, ("87", "15.6", "88", "15.5"))]:
    _arch = dict(dims=tuple(_base * 2 ** i for i in range(4)))
    _ARCHS[f"hornet_{_size}_7x7"] = (_arch, dict(
        _PAPER, params_m=_p7, macs_g=_m7, top1=_top1_7, drop_path_rate=_dpr,
        source=_SRC_1K.format(readme_p=_readme[0], readme=_readme[1])))
    _ARCHS[f"hornet_{_size}_gf"] = (dict(_arch, gf_sizes=_GF_224), dict(
        _PAPER, params_m=_pgf, macs_g=_mgf, top1=_top1_gf, drop_path_rate=_dpr, notes=_GF_NOTE_224,
        source=_SRC_1K.format(readme_p=_readme[2], readme=_readme[3])))

_LARGE = dict(dims=(192, 384, 768, 1536))
_ARCHS["hornet_large_7x7"] = (_LARGE, dict(
    _PAPER, **_22K, params_m=194.54, macs_g=34.82, drop_path_rate=0.2, notes=_22K_NOTE,
    source=_SRC_22K.format(stage="22k pre-training", readme_p="209", readme="34.8")))
_ARCHS["hornet_large_gf"] = (dict(_LARGE, gf_sizes=_GF_224), dict(
    _PAPER, **_22K, params_m=196.29, macs_g=34.64, drop_path_rate=0.2,
    notes=f"{_22K_NOTE}; {_GF_NOTE_224}",
    source=_SRC_22K.format(stage="22k pre-training", readme_p="211", readme="34.7 (with its 22k head)")))
_ARCHS["hornet_large_gf_384"] = (dict(_LARGE, gf_sizes=_GF_384), dict(
    _PAPER, **_22K, params_m=201.81, macs_g=101.81, drop_path_rate=0.4, input_size=(3, 384, 384), crop_pct=1.0,
    notes=f"{_22K_NOTE}; " + _GF_NOTE.format(side=384, s3=_GF_384[2], s4=_GF_384[3]),
    source=_SRC_L384.format(readme="101.8")))

# Our names that differ from the official constructors'.
_OFFICIAL_NAMES = {"hornet_large_gf_384": "hornet_large_gf_img384"}


def _register(name: str, arch: dict, card: dict) -> None:
    def build(**kwargs) -> HorNet:
        return HorNet(**{**arch, **kwargs})

    build.__name__ = build.__qualname__ = name
    aliases = (_OFFICIAL_NAMES[name],) if name in _OFFICIAL_NAMES else ()
    register_model(ModelCard(name=name, **card), aliases=aliases)(build)


for _name, (_arch, _card) in _ARCHS.items():
    _register(_name, _arch, _card)


# -- official checkpoints ----------------------------------------------------------------------------------------
@register_official_converter("hornet")
def _convert_official(state_dict: dict, model: nn.Module) -> dict:
    """raoyongming/HorNet keys -> ours: downsample_layers.{0..3} / stages.{i}.{j} / pwconv1,2 / norm / head."""
    out = {}
    for k, v in state_dict.items():
        k = official_layout_key(k)
        k = k.replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
        out[k] = v
    return out
