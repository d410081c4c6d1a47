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

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from ..layers import (
    ClassifierHead,
    GlobalLocalFilter,
    GnConv,
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
from .convnext import official_layout_key
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy


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
        self.gamma1 = layer_scale_parameter(dim, ls_init_value)
        self.gamma2 = layer_scale_parameter(dim, ls_init_value)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(layer_scale(self.gnconv(self.norm1(x)), self.gamma1))
        y = layer_scale(self.mlp(self.norm2(x.permute(0, 2, 3, 1))), self.gamma2, channels_first=False)
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class HorNet(ConvScopeModel):
    """HorNet: stem (4x4/4 conv, LN) -> four stages of HorNet blocks with gnConv of order `orders[i]`, stages
    2-4 opened by LN + 2x2/2 conv -> global average pool -> LN -> Linear.

    gf_sizes: per stage, None for the 7x7 depthwise conv, or the (h, w) spectrum size for which the stage's
        global-local filter is built (stage map H x W gives a spectrum H x (W//2 + 1)).
    """

    @classmethod
    def traits_for(cls, *, dims: Sequence[int]) -> ModelTraits:
        return hierarchy(dims)

    def __init__(self, depths: Sequence[int] = (2, 3, 18, 2), dims: Sequence[int] = (64, 128, 256, 512),
                 orders: Sequence[int] = (2, 3, 4, 5),
                 gf_sizes: Sequence[tuple[int, int] | None] = (None, None, None, None), *, in_chans: int = 3,
                 num_classes: int = 1000, scale: float = 1 / 3, ls_init_value: float = 1e-6,
                 head_init_scale: float = 1.0, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = HorNet.traits_for(dims=dims)
        self.stem = patchify_stem(in_chans, dims[0], LayerNorm2d)
        mixers = [None if gf is None else partial(GlobalLocalFilter, h=gf[0], w=gf[1]) for gf in gf_sizes]
        self.build_stages(
            depths, dims, drop_path_rate,
            downsample=lambda i: norm_conv_downsample(dims[i - 1], dims[i], LayerNorm2d),
            block=lambda i, j, dp: HorNetBlock(dims[i], orders[i], mixers[i], scale, ls_init_value, dp))
        self.head = ClassifierHead(dims[-1], num_classes, norm_layer=LayerNorm, drop_rate=drop_rate)
        init_trunc_normal(self)
        scale_classifier_(self.head.fc, head_init_scale)


# -- official checkpoints ----------------------------------------------------------------------------------------
def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """raoyongming/HorNet keys -> ours: downsample_layers.{0..3} / stages.{i}.{j} / pwconv1,2 / norm / head."""
    out = {}
    for k, v in state_dict.items():
        k = official_layout_key(k)
        k = k.replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
        out[k] = v
    return out


# -- variants ----------------------------------------------------------------------------------------------------
def gf_spectra(input_hw: tuple[int, int]) -> tuple[tuple[int, int] | None, ...]:
    """The gf_sizes of a GF model built for `input_hw`: the rfft2 spectra of the stride-16 and stride-32 maps."""
    h, w = input_hw
    return (None, None, (h // 16, w // 16 // 2 + 1), (h // 32, w // 32 // 2 + 1))


_GF_224 = gf_spectra((224, 224))  # (14, 8) and (7, 4)
_GF_384 = gf_spectra((384, 384))  # (24, 13) and (12, 7)

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
_22K_NOTE = ("released as ImageNet-22k pre-trained weights (with a 22k head); built here with a 1000-class head, "
             "whose count the card gives")


def _width_quantum(arch, i: int) -> int:
    """gnConv of order n halves the width n - 1 times; a global filter splits its (2^n - 1) / 2^(n-1) share of
    the width in two, which takes one halving more."""
    gf = arch.get("gf_sizes") or (None,) * len(arch["dims"])
    return 2 ** (arch["orders"][i] - (gf[i] is None))


def _gf_at_input_size(arch, input_hw):
    """A GF model rescaled to another input size gets filters sized for it, as the official 384 model does."""
    return dict(gf_sizes=gf_spectra(input_hw)) if any(arch.get("gf_sizes", ())) else {}


register_family(
    "hornet", HorNet, paper=Paper("HorNet: Efficient High-Order Spatial Interactions with Recursive Gated "
                                  "Convolutions", "2207.14284", "raoyongming/HorNet"),
    spec=ArchSpec(depths="depths", widths="dims", width_quantum=_width_quantum, at_input_size=_gf_at_input_size),
    converter=convert_official,
    card=Card(macs_convention="fvcore_manual_cf_ln"),  # the official channels-first LayerNorm is written out
    arch=dict(depths=(2, 3, 18, 2), orders=(2, 3, 4, 5)),
    variants={
        "hornet_tiny_7x7": variant(dims=(64, 128, 256, 512), card=Card(
            params_m=22.41, macs_g=3.98, top1=82.8, drop_path_rate=0.2,
            source=_SRC_1K.format(readme_p="22", readme="4.0"))),
        "hornet_tiny_gf": variant(dims=(64, 128, 256, 512), gf_sizes=_GF_224, card=Card(
            params_m=22.99, macs_g=3.91, top1=83.0, drop_path_rate=0.2, notes=_GF_NOTE_224,
            source=_SRC_1K.format(readme_p="23", readme="3.9"))),
        "hornet_small_7x7": variant(dims=(96, 192, 384, 768), card=Card(
            params_m=49.53, macs_g=8.83, top1=83.8, drop_path_rate=0.4,
            source=_SRC_1K.format(readme_p="50", readme="8.8"))),
        "hornet_small_gf": variant(dims=(96, 192, 384, 768), gf_sizes=_GF_224, card=Card(
            params_m=50.40, macs_g=8.73, top1=84.0, drop_path_rate=0.4, notes=_GF_NOTE_224,
            source=_SRC_1K.format(readme_p="50", readme="8.7"))),
        "hornet_base_7x7": variant(dims=(128, 256, 512, 1024), card=Card(
            params_m=87.26, macs_g=15.58, top1=84.2, drop_path_rate=0.5,
            source=_SRC_1K.format(readme_p="87", readme="15.6"))),
        "hornet_base_gf": variant(dims=(128, 256, 512, 1024), gf_sizes=_GF_224, card=Card(
            params_m=88.42, macs_g=15.46, top1=84.3, drop_path_rate=0.5, notes=_GF_NOTE_224,
            source=_SRC_1K.format(readme_p="88", readme="15.5"))),
        "hornet_large_7x7": variant(dims=(192, 384, 768, 1536), card=Card(
            params_m=194.54, macs_g=34.82, pretrain="ImageNet-22k", drop_path_rate=0.2, notes=_22K_NOTE,
            source=_SRC_22K.format(stage="22k pre-training", readme_p="209", readme="34.8"))),
        "hornet_large_gf": variant(dims=(192, 384, 768, 1536), gf_sizes=_GF_224, card=Card(
            params_m=196.29, macs_g=34.64, pretrain="ImageNet-22k", drop_path_rate=0.2,
            notes=f"{_22K_NOTE}; {_GF_NOTE_224}",
            source=_SRC_22K.format(stage="22k pre-training", readme_p="211", readme="34.7 (with its 22k head)"))),
        "hornet_large_gf_384": variant(dims=(192, 384, 768, 1536), gf_sizes=_GF_384,
                                       aliases=("hornet_large_gf_img384",),  # the official constructor's name
                                       card=Card(
            params_m=201.81, macs_g=101.81, pretrain="ImageNet-22k", drop_path_rate=0.4, input_size=(3, 384, 384),
            crop_pct=1.0, notes=f"{_22K_NOTE}; " + _GF_NOTE.format(side=384, s3=_GF_384[2], s4=_GF_384[3]),
            source=_SRC_L384.format(readme="101.8"))),
    })
