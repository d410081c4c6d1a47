"""MOAT (Yang et al., "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models", ICLR 2023,
arXiv 2210.01820), ported from the official TensorFlow code (google-research/deeplab2 @64bc1c1,
model/pixel_encoder/moat.py, model/layers/moat_blocks.py, model/layers/moat_attention.py).

A two-conv stem (3x3/2 conv, BN, GELU, 3x3 conv), two stages of MBConv blocks (with squeeze-excitation) and two
stages of MOAT blocks: an MBConv without SE placed *before* the attention, replacing the transformer's MLP, then
pre-LN multi-head self-attention with a 2-D relative position bias (head_dim 32, no MLP). Every stage opens with
a stride-2 block whose depthwise conv strides and whose shortcut average-pools (then a 1x1 conv where the width
changes). Head: global average pool -> LayerNorm -> linear.

Faithful to the TF code: BatchNorm eps 1e-3 (Keras' default), LayerNorm eps 1e-5, exact (erf) GELU, SiLU in the
SE (reduction to a quarter of the block's *output* width, applied on the expanded width), TensorFlow "same"
padding (for a stride-2 conv on an even side the padding is one row/column at the bottom/right only) and
"same" average pooling (padding excluded from the mean), stochastic depth rising as rate * block / num_blocks.
The relative position tables are 27x27 at stride 16 and 13x13 at stride 32 (`pos_embed_size` 14 and 7) and are
resized bilinearly to the window actually used. The official classification setting is global attention
(`window_size=None` in `get_model`; at 224 this is the config's 14x14 / 7x7 windows), so any input size works;
`window_size=(None, None, 14, 7)` gives the windowed form for downstream use, which needs sides that are
multiples of 224. `pool_size=2` is the classification shortcut pooling (the block default; `get_model` uses 3 for
dense prediction).

There is no official PyTorch checkpoint, so state-dict keys are our own layout and no converter is needed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ClassifierHead, LayerNorm, LayerNorm2d, RelPosWindowAttention, SqueezeExcite, drop_path_or_identity
from ..layers.reparam import fold_bn_act_after_, fold_bn_before_
from .base import ConvScopeModel
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy

BN_EPS = 1e-3      # tf.keras BatchNormalization's default epsilon
BN_MOMENTUM = 0.01  # Keras momentum 0.99
LN_EPS = 1e-5


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "same" for one side of `size`."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class SameConv2d(nn.Conv2d):
    """A conv with TensorFlow "same" padding: static and symmetric at stride 1 (odd kernels), computed from the
    input size at stride 2 (asymmetric on even sides)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__(in_chs, out_chs, kernel_size, stride, padding=(kernel_size - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            k, s = self.kernel_size[0], self.stride[0]
            pt, pb = tf_same_padding(x.shape[-2], k, s)
            pl, pr = tf_same_padding(x.shape[-1], k, s)
            x = F.pad(x, (pl, pr, pt, pb))
        return super().forward(x)


class SamePool2d(nn.Module):
    """TensorFlow's "same" average pooling: the padding is excluded from each window's mean."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (pt, pb), (pl, pr) = (tf_same_padding(s, self.kernel_size, self.stride) for s in x.shape[-2:])
        if (pt, pl) == (pb, pr):  # symmetric: torch's padding, excluded from the mean
            return F.avg_pool2d(x, self.kernel_size, self.stride, (pt, pl), count_include_pad=False)
        # one more at the end than at the start: extend the last window with ceil_mode, clipped to the input
        return F.avg_pool2d(x, self.kernel_size, self.stride, (pt, pl), ceil_mode=True, count_include_pad=False)


class MOATBlock(nn.Module):
    """MBConv (BN pre-norm, 1x1 expand, BN, GELU, 3x3 dw /stride, BN, GELU, [SE], 1x1 shrink) with a pooled /
    projected shortcut, then, unless `attention=False` (a plain MBConv block), x + Attn(LN(x))."""

    # the MBConv's hidden channels for structured pruning (convscope.deploy.prune): producer, followers, consumer
    prune_hidden = ("conv_expand", ("norm_expand", "act", "conv_dw", "norm_dw", "act", "se"), "conv_shrink")

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expansion_rate: int = 4,
                 se_ratio: float | None = 0.25, attention: bool = True, head_dim: int = 32,
                 window_size: int | tuple[int, int] | None = None, pos_embed_size: int | None = 7,
                 pool_size: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        inner = out_chs * expansion_rate
        self.pool = SamePool2d(pool_size, stride) if stride > 1 else nn.Identity()
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1) if in_chs != out_chs else nn.Identity()
        self.pre_norm = _bn(in_chs)
        self.conv_expand = nn.Conv2d(in_chs, inner, 1, bias=False)
        self.norm_expand = _bn(inner)
        self.conv_dw = SameConv2d(inner, inner, 3, stride, groups=inner, bias=False)
        self.norm_dw = _bn(inner)
        self.act = nn.GELU()
        self.se = SqueezeExcite(inner, max(1, int(out_chs * se_ratio)), act_layer=nn.SiLU) if se_ratio else \
            nn.Identity()
        self.conv_shrink = nn.Conv2d(inner, out_chs, 1)
        self.drop_path = drop_path_or_identity(drop_path)
        if attention:
            self.norm_attn = LayerNorm2d(out_chs, eps=LN_EPS)
            self.attn = RelPosWindowAttention(out_chs, head_dim, window_size, pos_embed_size)
        else:
            self.norm_attn = self.attn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(self.pool(x))
        x = self.act(self.norm_expand(self.conv_expand(self.pre_norm(x))))
        x = self.se(self.act(self.norm_dw(self.conv_dw(x))))
        x = shortcut + self.drop_path(self.conv_shrink(x))
        if self.attn is not None:
            x = x + self.drop_path(self.attn(self.norm_attn(x)))
        return x

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the MBConv's BatchNorms: the pre-norm into the 1x1 expand conv (unpadded: exact), norm_expand and
        norm_dw into the convs before them. Idempotent."""
        if isinstance(self.pre_norm, nn.BatchNorm2d):
            self.pre_norm = fold_bn_before_(self.pre_norm, self.conv_expand)
        if isinstance(self.norm_expand, nn.BatchNorm2d):
            self.norm_expand = fold_bn_act_after_(self.conv_expand, self.norm_expand)
        if isinstance(self.norm_dw, nn.BatchNorm2d):
            self.norm_dw = fold_bn_act_after_(self.conv_dw, self.norm_dw)


class MOAT(ConvScopeModel):
    """MOAT: stem -> MBConv, MBConv, MOAT, MOAT stages (each opened by a stride-2 block) -> pool, LN, linear.

    `window_size` / `pos_embed_size`: per stage (None for the MBConv stages); a None window is global attention.
    `pos_embed=False` drops the relative position bias (the official "no_pe" checkpoints).
    """

    @classmethod
    def traits_for(cls, *, dims: Sequence[int], window_size: Sequence[int | tuple[int, int] | None]) -> ModelTraits:
        """Window attention at stage i (stride 2**(i+2)) needs input sides that are multiples of its window there."""
        wins = [None if w is None else tuple(w) if isinstance(w, (tuple, list)) else (w, w) for w in window_size]
        q = math.lcm(1, *(2 ** (i + 2) * w[k] for i, w in enumerate(wins) if w is not None for k in (0, 1)))
        return hierarchy(dims, input_multiple=q, reparameterizable=True)  # its BatchNorms fold

    def __init__(self, depths: Sequence[int] = (2, 3, 7, 2), dims: Sequence[int] = (96, 192, 384, 768), *,
                 stem_dim: int = 64, block_types: Sequence[str] = ("mbconv", "mbconv", "moat", "moat"),
                 expansion_rate: int = 4, se_ratio: float = 0.25, head_dim: int = 32,
                 window_size: Sequence[int | tuple[int, int] | None] = (None, None, None, None),
                 pos_embed_size: Sequence[int | None] = (None, None, 14, 7), pos_embed: bool = True,
                 pool_size: int = 2, in_chans: int = 3, num_classes: int = 1000, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = MOAT.traits_for(dims=dims, window_size=window_size)
        n = len(depths)
        for name, v in (("dims", dims), ("block_types", block_types), ("window_size", window_size),
                        ("pos_embed_size", pos_embed_size)):
            if len(v) != n:
                raise ValueError(f"{name} must have one entry per stage ({n}); got {len(v)}")
        if any(t not in ("mbconv", "moat") for t in block_types):
            raise ValueError(f"block_types must be 'mbconv' or 'moat'; got {tuple(block_types)}")
        self.window_size = tuple(None if w is None else tuple(w) if isinstance(w, (tuple, list)) else (w, w)
                                 for w in window_size)
        self.stem = nn.Sequential(SameConv2d(in_chans, stem_dim, 3, 2), _bn(stem_dim), nn.GELU(),
                                  SameConv2d(stem_dim, stem_dim, 3, 1))
        total = sum(depths)
        starts = [sum(depths[:i]) for i in range(n)]
        in_dims = [stem_dim, *dims[:-1]]

        def block(i: int, j: int, _dp: float) -> MOATBlock:
            moat = block_types[i] == "moat"
            return MOATBlock(in_dims[i] if j == 0 else dims[i], dims[i], 2 if j == 0 else 1, expansion_rate,
                             None if moat else se_ratio, moat, head_dim, window_size[i],
                             pos_embed_size[i] if pos_embed else None, pool_size,
                             drop_path_rate * (starts[i] + j) / total)  # the official schedule

        self.build_stages(depths, dims, drop_path_rate, block=block, downsample=lambda i: None, stem_reduction=4)
        self.head = ClassifierHead(dims[-1], num_classes, norm_layer=lambda c: LayerNorm(c, eps=LN_EPS),
                                   drop_rate=drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():  # the official initialisers: N(0, 0.02) kernels, zero biases
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        h, w = x.shape[-2:]
        q = self.traits.input_multiple
        if q > 1 and (h % q or w % q):
            raise ValueError(f"{self.model_name} with window attention needs H and W multiples of {q}; got {h}x{w}")


# -- variants ----------------------------------------------------------------------------------------------------
_SRC = ("google-research/deeplab2@64bc1c1 g3doc/projects/moat_imagenet_pretrained_checkpoints.md (with position "
        "embedding: FLOPs (MACs), top-1); params: the exact count of the official architecture "
        "(model/pixel_encoder/moat.py), which rounds to the table's 0.1 M figure (27.8 / 41.6 / 73.4 / 190.0 / 483.2; "
        "tiny 3.4 / 5.1 / 9.8 / 19.5)")
_SRC_TINY = _SRC + "; tiny-MOAT at 256"
_NOTES = ("no official PyTorch checkpoint exists (TF only): keys are our own layout and no converter is needed; "
          "global attention (the official classification setting)")
def _big_macs(with_pe: float, without_pe: float, counted: float) -> str:
    return (f"; official FLOPs (MACs) {with_pe:g} G with position embedding (the card's figure, a listed exception "
            f"in convscope.analysis.fidelity), {without_pe:g} G without: the count is {counted:g} G (fvcore "
            f"convention), {100 * (counted / without_pe - 1):+.1f}% off "
            f"the no-PE figure; the PE figure's extra {with_pe - without_pe:.1f} G is not explained by the bias "
            "itself (TF's relative-position reindexing einsums, unverified)")


_OPTION2 = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # "option 2" normalisation of the 22k models


def _quantum(arch, i: int) -> int:
    return arch.get("head_dim", 32) if arch.get("block_types", ("mbconv", "mbconv", "moat", "moat"))[i] == "moat" \
        else 1


register_family(
    "moat", MOAT, paper=Paper("MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models",
                              "2210.01820", "google-research/deeplab2"),
    spec=ArchSpec(depths="depths", widths="dims", width_quantum=_quantum),
    card=Card(macs_convention="fvcore", notes=_NOTES),
    variants={
        "moat_0": variant(depths=(2, 3, 7, 2), dims=(96, 192, 384, 768), stem_dim=64, card=Card(
            params_m=27.847, macs_g=5.7, top1=83.3, drop_path_rate=0.2, source=_SRC)),
        "moat_1": variant(depths=(2, 6, 14, 2), dims=(96, 192, 384, 768), stem_dim=64, card=Card(
            params_m=41.598, macs_g=9.1, top1=84.2, drop_path_rate=0.3, source=_SRC)),
        "moat_2": variant(depths=(2, 6, 14, 2), dims=(128, 256, 512, 1024), stem_dim=128, card=Card(
            params_m=73.422, macs_g=54.3, notes=_NOTES + _big_macs(54.3, 53.8, 53.565), top1=87.5, drop_path_rate=0.3,
            pretrain="ImageNet-22k",
            input_size=(3, 384, 384), source=_SRC, **_OPTION2)),
        "moat_3": variant(depths=(2, 12, 28, 2), dims=(160, 320, 640, 1280), stem_dim=160, card=Card(
            params_m=189.958, macs_g=271.0, notes=_NOTES + _big_macs(271.0, 266.1, 264.392),
            top1=88.4, drop_path_rate=0.6, pretrain="ImageNet-22k",
            input_size=(3, 512, 512), source=_SRC, **_OPTION2)),
        "moat_4": variant(depths=(2, 12, 28, 2), dims=(256, 512, 1024, 2048), stem_dim=256, card=Card(
            params_m=483.214, macs_g=648.5, notes=_NOTES + _big_macs(648.5, 640.6, 637.845),
            top1=89.1, drop_path_rate=0.7, pretrain="ImageNet-22k",
            input_size=(3, 512, 512), source=_SRC, **_OPTION2)),
        "tiny_moat_0": variant(depths=(2, 3, 7, 2), dims=(32, 64, 128, 256), stem_dim=32, card=Card(
            params_m=3.355, macs_g=1.1, notes=_NOTES + (
                "; official FLOPs (MACs) 1.1 G: the count, 1.063 G under the fvcore convention, rounds to it (-3.4%, "
                "within the rounding of a one-decimal figure)"), top1=76.6, input_size=(3, 256, 256),
            source=_SRC_TINY)),
        "tiny_moat_1": variant(depths=(2, 3, 7, 2), dims=(40, 80, 160, 320), stem_dim=40, card=Card(
            params_m=5.123, macs_g=1.6, top1=79.2, input_size=(3, 256, 256), source=_SRC_TINY)),
        "tiny_moat_2": variant(depths=(2, 3, 7, 2), dims=(56, 112, 224, 448), stem_dim=56, card=Card(
            params_m=9.773, macs_g=3.0, top1=81.7, input_size=(3, 256, 256), source=_SRC_TINY)),
        "tiny_moat_3": variant(depths=(2, 3, 7, 2), dims=(80, 160, 320, 640), stem_dim=80, card=Card(
            params_m=19.534, macs_g=6.0, top1=83.3, drop_path_rate=0.1, input_size=(3, 256, 256), source=_SRC_TINY)),
    })
