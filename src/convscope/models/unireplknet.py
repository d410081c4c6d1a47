"""UniRepLKNet (Ding et al., "UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point
Cloud, Time-Series and Image Recognition", arXiv 2311.15599).

Large kernels see wide without going deep, so a few 13x13 Dilated Reparam Blocks (a large kernel trained with
parallel dilated small kernels, merged afterwards) are interleaved with cheap 3x3 blocks. Each block is
dwconv -> BN -> SE -> Linear(4C) -> GELU -> GRN -> Linear(C) -> BN -> layer scale, with a shortcut.

`reparameterize()` on a block gives the official deploy form exactly (the official `reparameterize_unireplknet`):
the dilated branches and the first BN merge into the depthwise conv; GRN's bias, the second BN and the layer scale
fold into the second Linear. State-dict keys are the official ones with the ConvNeXt-style layout of this library
(`stem`, `stages.i.downsample`, `stages.i.blocks.j`, `head.norm`, `head.fc`); `load_checkpoint(...,
source="official")` maps the official keys of both the train and the deploy form.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ..layers import (
    ClassifierHead,
    DilatedReparamBlock,
    GlobalResponseNorm,
    LayerNorm,
    LayerNorm2d,
    SqueezeExcite,
    drop_path_or_identity,
    init_trunc_normal,
    layer_scale,
    layer_scale_parameter,
    scale_classifier_,
)
from ..layers.mixers.dilated_reparam import DILATED_BRANCHES
from ..layers.reparam import fuse_affine_after_, fuse_bn_into_conv_
from .base import ConvScopeModel
from .convnext import official_layout_key
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy


class UniRepLKNetBlock(nn.Module):
    """x + DropPath(gamma * BN(pwconv2(GRN(GELU(pwconv1(SE(BN(dwconv(x))))))))).

    dwconv is a Dilated Reparam Block for kernel_size >= 7, a plain depthwise conv for 3 or 5, and nothing for 0.
    The MLP runs channels-last (Linear layers); GRN has a bias; the SE block reduces to C/4 with ReLU and sigmoid.
    """

    # the MLP's hidden channels for structured pruning (convscope.deploy.prune): producer, followers, consumer
    prune_hidden = ("pwconv1", ("act", "grn"), "pwconv2")
    # the stage's channels: (attribute, role) pairs
    prune_stream = (("dwconv", "dw"), ("norm", "norm"), ("se", "se"), ("pwconv1", "in"), ("pwconv2", "out"),
                    ("ffn_bn", "norm"), ("gamma", "scale"))

    def __init__(self, dim: int, kernel_size: int, drop_path: float = 0.0, ls_init_value: float | None = 1e-6,
                 mlp_ratio: float = 4) -> None:
        super().__init__()
        if kernel_size == 0:
            self.dwconv: nn.Module = nn.Identity()
        elif kernel_size >= 7:
            self.dwconv = DilatedReparamBlock(dim, kernel_size)
        elif kernel_size in (3, 5):
            self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        else:
            raise ValueError(f"UniRepLKNet block kernel_size must be 0, 3, 5 or 7..17; got {kernel_size}")
        self.norm: nn.Module = nn.BatchNorm2d(dim) if kernel_size else nn.Identity()
        self.se = SqueezeExcite(dim, dim // 4)
        hidden = int(mlp_ratio * dim)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden, channels_last=True)
        self.pwconv2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_bn: nn.Module = nn.BatchNorm2d(dim)
        self.gamma = layer_scale_parameter(dim, ls_init_value or None)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.norm(self.dwconv(x)))
        y = self.pwconv2(self.grn(self.act(self.pwconv1(y.permute(0, 2, 3, 1)))))
        y = self.ffn_bn(y.permute(0, 3, 1, 2))
        return x + self.drop_path(layer_scale(y, self.gamma))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
        if isinstance(self.norm, nn.BatchNorm2d):
            conv = self.dwconv.lk_conv.conv if isinstance(self.dwconv, DilatedReparamBlock) else self.dwconv
            fuse_bn_into_conv_(conv, self.norm)
            self.norm = nn.Identity()
        if self.grn.bias is not None:  # pwconv2(GRN(y)) = pwconv2(GRN(y) - beta) + pwconv2.weight @ beta
            fuse_affine_after_(self.pwconv2, shift=self.pwconv2.weight @ self.grn.bias)
            self.grn.bias = None
        if isinstance(self.ffn_bn, nn.BatchNorm2d):
            fuse_bn_into_conv_(self.pwconv2, self.ffn_bn)
            self.ffn_bn = nn.Identity()
        if self.gamma is not None:
            fuse_affine_after_(self.pwconv2, self.gamma)
            self.gamma = None


class UniRepLKNet(ConvScopeModel):
    """UniRepLKNet: stem (3x3/2 conv to C/2, LN, GELU, 3x3/2 conv, LN) -> four stages of UniRepLKNet blocks with
    per-block kernel sizes, stages 2-4 opened by a 3x3/2 conv + LN -> global average pool -> LN -> Linear."""

    @classmethod
    def traits_for(cls, *, dims: Sequence[int]) -> ModelTraits:
        return hierarchy(dims, reparameterizable=True)  # dilated branches merge into the large kernels

    def __init__(self, depths: tuple[int, ...] = (3, 3, 27, 3), dims: tuple[int, ...] = (96, 192, 384, 768),
                 kernel_sizes: tuple[tuple[int, ...], ...] | None = None, *, in_chans: int = 3,
                 num_classes: int = 1000, ls_init_value: float | None = 1e-6, head_init_scale: float = 1.0,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = UniRepLKNet.traits_for(dims=dims)
        kernel_sizes = kernel_sizes or DEFAULT_KERNEL_SIZES.get(tuple(depths))
        if kernel_sizes is None or [len(k) for k in kernel_sizes] != list(depths):
            raise ValueError(f"kernel_sizes must give one kernel size per block for depths {tuple(depths)}; "
                             f"got {kernel_sizes}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1), LayerNorm2d(dims[0] // 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1), LayerNorm2d(dims[0]),
        )
        self.build_stages(
            depths, dims, drop_path_rate,
            downsample=lambda i: nn.Sequential(nn.Conv2d(dims[i - 1], dims[i], 3, stride=2, padding=1),
                                               LayerNorm2d(dims[i])),
            block=lambda i, j, dp: UniRepLKNetBlock(dims[i], kernel_sizes[i][j], dp, ls_init_value))
        self.head = ClassifierHead(dims[-1], num_classes, norm_layer=LayerNorm, drop_rate=drop_rate)
        init_trunc_normal(self)
        scale_classifier_(self.head.fc, head_init_scale)


def _dilated_branch_index(kernel_size: int) -> dict[str, int]:
    ks, rs = DILATED_BRANCHES[kernel_size]
    return {f"k{k}_{r}": i for i, (k, r) in enumerate(zip(ks, rs, strict=False))}


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """AILab-CVC/UniRepLKNet keys -> ours, for the train form and the deploy form (reparameterize_unireplknet())."""
    out = {}
    for k, v in state_dict.items():
        k = official_layout_key(k)
        k = k.replace(".dwconv.origin_bn.", ".dwconv.lk_conv.bn.")
        k = re.sub(r"\.dwconv\.lk_origin\.(weight|bias)$", r".dwconv.lk_conv.conv.\1", k)
        m = re.search(r"\.dwconv\.dil_(conv|bn)_(k\d+_\d+)\.", k)
        if m:  # dil_conv_k5_1 / dil_bn_k5_1 -> branches.<i>.conv / .bn, i from the block's kernel size
            block = model.get_submodule(k[:m.start()]) if k[:m.start()] else None
            index = _dilated_branch_index(block.dwconv.kernel_size)[m[2]]
            k = f"{k[:m.start()]}.dwconv.branches.{index}.{m[1]}.{k[m.end():]}"
        k = k.replace(".se.down.", ".se.fc1.").replace(".se.up.", ".se.fc2.")
        k = k.replace(".pwconv1.1.", ".pwconv1.").replace(".pwconv2.0.", ".pwconv2.")
        k = k.replace(".pwconv2.2.", ".ffn_bn.")
        k = k.replace(".act.1.gamma", ".grn.weight").replace(".act.1.beta", ".grn.bias")
        if k.endswith((".grn.weight", ".grn.bias")):
            v = v.reshape(-1)  # (1, 1, 1, C) -> (C,)
        out[k] = v
    return out


# Per-block kernel sizes of the official unireplknet.py (13 = Dilated Reparam Block, 3 = plain dw 3x3).
_AFP_DEPTHS, _N_DEPTHS, _T_DEPTHS, _SBLXL_DEPTHS = (2, 2, 6, 2), (2, 2, 8, 2), (3, 3, 18, 3), (3, 3, 27, 3)
DEFAULT_KERNEL_SIZES: dict[tuple[int, ...], tuple[tuple[int, ...], ...]] = {
    _AFP_DEPTHS: ((3,) * 2, (13,) * 2, (13,) * 6, (13,) * 2),
    _N_DEPTHS: ((3,) * 2, (13,) * 2, (13,) * 8, (13,) * 2),
    _T_DEPTHS: ((3,) * 3, (13,) * 3, (13, 3) * 9, (13,) * 3),
    _SBLXL_DEPTHS: ((3,) * 3, (13,) * 3, (13, 3, 3) * 9, (13,) * 3),
}
_AFP = dict(depths=_AFP_DEPTHS, kernel_sizes=DEFAULT_KERNEL_SIZES[_AFP_DEPTHS])
_N = dict(depths=_N_DEPTHS, kernel_sizes=DEFAULT_KERNEL_SIZES[_N_DEPTHS])
_T = dict(depths=_T_DEPTHS, kernel_sizes=DEFAULT_KERNEL_SIZES[_T_DEPTHS])
_SBLXL = dict(depths=_SBLXL_DEPTHS, kernel_sizes=DEFAULT_KERNEL_SIZES[_SBLXL_DEPTHS])

_SRC = ("top-1, MACs (README 'FLOPs') and resolution: AILab-CVC/UniRepLKNet README @b5677d8; params_m: the "
        "official unireplknet.py @b5677d8 counted in its train form (deploy=False); deploy_params_m: counted with "
        "deploy=True, which is what the README's rounded #params give (e.g. A 4.4M); drop path: Image/README.md")
_IN1K = "ImageNet-1k at 224"
_FT384 = dict(input_size=(3, 384, 384), crop_pct=1.0, pretrain="ImageNet-22k")

register_family(
    "unireplknet", UniRepLKNet, paper=Paper(
        "UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud, Time-Series and "
        "Image Recognition", "2311.15599", "AILab-CVC/UniRepLKNet"),
    spec=ArchSpec(depths="depths", widths="dims", per_block=("kernel_sizes",)), converter=convert_official,
    card=Card(source=_SRC, macs_form="deploy"),
    variants={
        "unireplknet_a": variant(**_AFP, dims=(40, 80, 160, 320), card=Card(
            params_m=4.649060, deploy_params_m=4.437300, macs_g=0.6, top1=77.0, notes=_IN1K)),
        "unireplknet_f": variant(**_AFP, dims=(48, 96, 192, 384), card=Card(
            params_m=6.489328, deploy_params_m=6.235216, macs_g=0.9, top1=78.6, notes=_IN1K)),
        "unireplknet_p": variant(**_AFP, dims=(64, 128, 256, 512), card=Card(
            params_m=11.080520, deploy_params_m=10.741704, macs_g=1.6, top1=80.2, drop_path_rate=0.1, notes=_IN1K)),
        "unireplknet_n": variant(**_N, dims=(80, 160, 320, 640), card=Card(
            params_m=18.818880, deploy_params_m=18.318560, macs_g=2.8, top1=81.6, drop_path_rate=0.1, notes=_IN1K)),
        "unireplknet_t": variant(**_T, dims=(80, 160, 320, 640), card=Card(
            params_m=31.693420, deploy_params_m=31.037980, macs_g=4.9, top1=83.2, drop_path_rate=0.2, notes=_IN1K)),
        "unireplknet_s": variant(**_SBLXL, dims=(96, 192, 384, 768), card=Card(
            params_m=56.456704, deploy_params_m=55.645984, macs_g=9.1, top1=83.9, drop_path_rate=0.4,
            notes=_IN1K + "; ImageNet-22k -> 1k at 384: 86.4 (26.7G MACs)")),
        "unireplknet_b": variant(**_SBLXL, dims=(128, 256, 512, 1024), card=Card(
            params_m=99.089416, deploy_params_m=98.008456, macs_g=47.2, top1=87.4, drop_path_rate=0.2,
            notes="ImageNet-22k pre-trained at 224, fine-tuned on 1k at 384", **_FT384)),
        "unireplknet_l": variant(**_SBLXL, dims=(192, 384, 768, 1536), card=Card(
            params_m=220.076056, deploy_params_m=218.454616, macs_g=105.4, top1=87.9, drop_path_rate=0.3,
            notes="ImageNet-22k pre-trained at 192, fine-tuned on 1k at 384", **_FT384)),
        "unireplknet_xl": variant(**_SBLXL, dims=(256, 512, 1024, 2048), card=Card(
            params_m=388.690984, deploy_params_m=386.529064, macs_g=187.0, top1=88.0, drop_path_rate=0.3,
            notes="ImageNet-22k pre-trained at 192, fine-tuned on 1k at 384", **_FT384)),
    })
