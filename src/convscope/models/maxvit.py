"""MaxViT (Tu et al., "MaxViT: Multi-Axis Vision Transformer", arXiv 2204.01697), the official TensorFlow weights'
architecture (google-research/maxvit) as timm ports it (`maxvit_*_tf_*`).

Every block of every stage is MBConv -> block (window) attention + FFN -> grid attention + FFN:

- stem: 3x3/2 conv (bias) -> BN -> GELU -> 3x3 conv (bias); the first block of each stage strides by 2
  (depthwise conv), so the stages sit at strides 4, 8, 16, 32;
- MBConv: pre-norm BN -> 1x1 expand x4 (no bias) -> BN -> GELU -> 3x3 depthwise -> BN -> GELU -> SE (0.25 of the
  output width, SiLU, sigmoid) -> 1x1 project (bias); shortcut 2x2 average pool + 1x1 conv where it downsamples;
- attention: pre-LN, heads of 32 channels, 2-D relative position bias (`convscope.layers.mixers.PartitionAttention`),
  FFN x4 with GELU;
- head: global pool -> LayerNorm -> Linear(C) -> tanh (pre-logits) -> Linear(num_classes).

TF specifics kept for the official weights: "same" padding (a stride-2 3x3 conv on an even map pads one row and
column at the bottom / right only), BN eps 1e-3, LN eps 1e-5, tanh-approximated GELU, qkv laid out
(3, heads, head_dim) and the (heads, 2P-1, 2P-1) bias table.

Input sizes: H and W must be multiples of 32. The window and grid follow the input as in the official configs
(224 -> 7, 384 -> 12, 512 -> 16): both are (H/32) x (W/32) at every stage, and the relative position tables,
built for `window_size`, are resampled as timm resamples them when the partition differs (timm's
`set_input_size`). State-dict keys are timm's, so timm's `maxvit_*_tf_*` checkpoints load directly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LayerNorm, Mlp, SqueezeExcite, drop_path_or_identity, to_2tuple
from ..layers.mixers.partition_attention import PartitionAttention, RelPosBias2d
from ..layers.reparam import fold_bn_act_after_, fold_bn_before_
from .base import ConvScopeModel
from .registry import INCEPTION_MEAN, INCEPTION_STD, ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy

BN_EPS = 1e-3   # TF BatchNormalization's default, used by the official code
LN_EPS = 1e-5


def _gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class SameConv2d(nn.Conv2d):
    """A conv with TensorFlow's "same" padding for odd kernels on maps whose sides are multiples of the stride:
    total padding k - s per side, the extra one at the bottom / right (k=3, s=2 pads (0, 1)). Shapes are fixed by
    the model's input check, so the padding is a constant."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)
        total = max(kernel_size - stride, 0)
        self.tf_pad = (total // 2, total - total // 2) * 2   # (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.tf_pad))


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an activation (identity when `act` is False); BatchNorm2d's keys."""

    def __init__(self, num_features: int, act: bool = True, eps: float = BN_EPS) -> None:
        super().__init__(num_features, eps=eps)
        self.act = _gelu() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class Downsample(nn.Module):
    """MBConv shortcut: 2x2/2 average pool, then a 1x1 conv (bias) when the width changes."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2)
        self.expand = nn.Conv2d(in_chs, out_chs, 1) if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


class MBConv(nn.Module):
    """Pre-norm inverted bottleneck with SE: x' = shortcut(x) + DropPath(proj(SE(dw(expand(BN(x))))))."""

    # the hidden channels for structured pruning (convscope.deploy.prune): producer, followers, consumer
    prune_hidden = ("conv1_1x1", ("norm1", "conv2_kxk", "norm2", "se"), "conv3_1x1")

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 4.0,
                 se_ratio: float = 0.25, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = int(out_chs * expand_ratio)
        self.shortcut = Downsample(in_chs, out_chs) if stride == 2 else nn.Identity()
        if stride == 1 and in_chs != out_chs:
            raise ValueError(f"a stride-1 MBConv keeps its width; got {in_chs} -> {out_chs}")
        self.pre_norm = BatchNormAct2d(in_chs, act=False)
        self.conv1_1x1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.norm1 = BatchNormAct2d(mid)
        self.conv2_kxk = SameConv2d(mid, mid, 3, stride=stride, groups=mid, bias=False)
        self.norm2 = BatchNormAct2d(mid)
        self.se = SqueezeExcite(mid, int(se_ratio * out_chs), act_layer=nn.SiLU)
        self.conv3_1x1 = nn.Conv2d(mid, out_chs, 1)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.norm1(self.conv1_1x1(self.pre_norm(x)))
        x = self.se(self.norm2(self.conv2_kxk(x)))
        return self.drop_path(self.conv3_1x1(x)) + shortcut

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """The pre-norm BatchNorm into the 1x1 expand conv (unpadded: exact), norm1 and norm2 into the convs
        before them (their GELUs stay); idempotent."""
        if isinstance(self.pre_norm, nn.BatchNorm2d):
            self.pre_norm = fold_bn_before_(self.pre_norm, self.conv1_1x1)
        if isinstance(self.norm1, nn.BatchNorm2d):
            self.norm1 = fold_bn_act_after_(self.conv1_1x1, self.norm1)
        if isinstance(self.norm2, nn.BatchNorm2d):
            self.norm2 = fold_bn_act_after_(self.conv2_kxk, self.norm2)


class PartitionBlock(nn.Module):
    """x + DropPath(attn(LN(x))); x + DropPath(MLP(LN(x))), on a channels-last (B, H, W, C) map, the attention
    within block or grid partitions."""

    def __init__(self, dim: int, partition: str, splits: int, window_size: int | tuple[int, int], head_dim: int = 32,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=LN_EPS)
        self.attn = PartitionAttention(dim, partition, head_dim=head_dim, splits=splits, window_size=window_size)
        self.drop_path1 = drop_path_or_identity(drop_path)
        self.norm2 = LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=_gelu)
        self.drop_path2 = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class MaxViTBlock(nn.Module):
    """MBConv (NCHW) -> block attention -> grid attention (channels-last), back to NCHW.

    splits: windows per side at this stage (the map over the partition size), 2**(stages - 1 - stage) when the
    partition is input / 32.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, splits: int, window_size: int | tuple[int, int],
                 head_dim: int = 32, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv = MBConv(in_chs, out_chs, stride, drop_path=drop_path)
        self.attn_block = PartitionBlock(out_chs, "block", splits, window_size, head_dim, drop_path=drop_path)
        self.attn_grid = PartitionBlock(out_chs, "grid", splits, window_size, head_dim, drop_path=drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.attn_grid(self.attn_block(x)).permute(0, 3, 1, 2)


class Stem(nn.Module):
    """3x3/2 conv (bias, TF "same") -> BN -> GELU -> 3x3 conv (bias)."""

    def __init__(self, in_chans: int, width: int) -> None:
        super().__init__()
        self.conv1 = SameConv2d(in_chans, width, 3, stride=2)
        self.norm1 = BatchNormAct2d(width)
        self.conv2 = SameConv2d(width, width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """norm1 into conv1 (its GELU stays); idempotent."""
        if isinstance(self.norm1, nn.BatchNorm2d):
            self.norm1 = fold_bn_act_after_(self.conv1, self.norm1)


class NormMlpHead(nn.Module):
    """Global average pool -> LayerNorm -> dropout-free pre-logits Linear(C, hidden) + tanh -> dropout -> fc
    (the official `cls_hsize` head; timm's NormMlpClassifierHead keys)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.hidden = hidden
        self.norm = LayerNorm(in_features, eps=LN_EPS)
        self.pre_logits = nn.Sequential()
        self.pre_logits.add_module("fc", nn.Linear(in_features, hidden))
        self.pre_logits.add_module("act", nn.Tanh())
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pre_logits(self.norm(x.mean((2, 3)))))
        return x if pre_logits else self.fc(x)


class MaxViT(ConvScopeModel):
    """MaxViT: stem (stride 2) -> four stages of MaxViT blocks (the first of each strides by 2) -> MLP head.

    window_size: the partition (window = grid) the relative position tables are built for, the official
        variant's input / 32 (7 at 224, 12 at 384, 16 at 512); inputs of other sizes use (H/32, W/32) partitions
        and resample the tables.
    head_hidden: width of the tanh pre-logits layer (default: the last stage's width).
    """

    #: The window / grid partition is taken from the input (timm fixes it at build time: `set_input_size`).
    partition_follows_input = True

    @classmethod
    def traits_for(cls, *, dims: Sequence[int]) -> ModelTraits:
        """Input sides are multiples of the last stride (window and grid partitions of H/32 x W/32 at every stage
        for four stages); the smallest input is one 1x1 partition there."""
        m = 2 ** (len(dims) + 1)
        return hierarchy(dims, min_input_size=(m, m), input_multiple=m)

    def __init__(self, depths: tuple[int, ...] = (2, 2, 5, 2), dims: tuple[int, ...] = (64, 128, 256, 512), *,
                 stem_width: int = 64, window_size: int | tuple[int, int] = 7, head_dim: int = 32,
                 head_hidden: int | None = None, in_chans: int = 3, num_classes: int = 1000, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = MaxViT.traits_for(dims=dims)
        for d in dims:
            if d % head_dim:
                raise ValueError(f"every width must be a multiple of head_dim={head_dim}; got dims={tuple(dims)}")
        self.window_size = to_2tuple(window_size)
        n = len(depths)
        self.stem = Stem(in_chans, stem_width)
        self.build_stages(
            depths, dims, drop_path_rate, downsample=lambda i: None,
            block=lambda i, j, dp: MaxViTBlock(
                (stem_width if i == 0 else dims[i - 1]) if j == 0 else dims[i], dims[i], 2 if j == 0 else 1,
                splits=2 ** (n - 1 - i), window_size=window_size, head_dim=head_dim, drop_path=dp))
        self.head = NormMlpHead(dims[-1], num_classes, head_hidden or dims[-1], drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        """The official initialisation: every conv / dense kernel and the bias tables N(0, 0.02), biases 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RelPosBias2d):
                nn.init.normal_(m.relative_position_bias_table, std=0.02)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        h, w = x.shape[-2:]
        m = self.traits.input_multiple
        if h % m or w % m:
            raise ValueError(f"{self.model_name} needs H and W multiples of {m} (window and grid partitions of "
                             f"H/{m} x W/{m} at every stage); got {h}x{w}")


# -- variants ----------------------------------------------------------------------------------------------------
_SRC = ("params and MACs: timm benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv @aa4b585 (fvcore counts of the "
        "ported official weights at {res}; the official README @70a4707 rounds params to {p} and gives {f}G FLOPs); "
        "top-1: google-research/maxvit README @70a4707 (ImageNet-1k, {res})")
_NOTE_HI = ("the official README's FLOPs ({f}G) run {d} above timm's fvcore count, which this card follows and "
            "convscope's 'fvcore' count equals (both include the bias table's one-hot einsum lookups); timm "
            "evaluates these weights with crop_mode='squash' (resize to the full input, no crop), which "
            "PretrainedCfg expresses as crop_pct=1.0")
_PAPER = Paper("MaxViT: Multi-Axis Vision Transformer", "2204.01697", "google-research/maxvit")
_T = dict(depths=(2, 2, 5, 2), dims=(64, 128, 256, 512), stem_width=64)
_S = dict(depths=(2, 2, 5, 2), dims=(96, 192, 384, 768), stem_width=64)
_B = dict(depths=(2, 6, 14, 2), dims=(96, 192, 384, 768), stem_width=64)
_L = dict(depths=(2, 6, 14, 2), dims=(128, 256, 512, 1024), stem_width=128)
# The fine-tuned 384 / 512 weights take [-1, 1] inputs (timm's configs); the 224 ones ImageNet mean / std.
_HI = dict(crop_pct=1.0, mean=INCEPTION_MEAN, std=INCEPTION_STD)
_224 = dict(crop_pct=0.95)


def _at_input_size(arch, hw):
    """The bias tables built for the new input's partition (H/32, W/32), so no resampling is needed there."""
    m = 2 ** (len(arch["dims"]) + 1)
    return {"window_size": (hw[0] // m, hw[1] // m)}


register_family(
    "maxvit", MaxViT, paper=_PAPER,
    spec=ArchSpec(depths="depths", widths="dims", width_quantum=32, input_step=32, at_input_size=_at_input_size),
    timm=True, card=Card(interpolation="bicubic"),
    variants={
        "maxvit_tiny_tf_224": variant(**_T, window_size=7, card=Card(
            params_m=30.92, macs_g=5.60, top1=83.62, drop_path_rate=0.2, **_224,
            source=_SRC.format(res=224, p="31M", f="5.6"))),
        "maxvit_tiny_tf_384": variant(**_T, window_size=12, card=Card(
            params_m=30.98, macs_g=17.53, top1=85.24, input_size=(3, 384, 384), **_HI,
            source=_SRC.format(res=384, p="31M", f="17.7"), notes=_NOTE_HI.format(f="17.7", d="1.0%"))),
        "maxvit_tiny_tf_512": variant(**_T, window_size=16, card=Card(
            params_m=31.05, macs_g=33.49, top1=85.72, input_size=(3, 512, 512), **_HI,
            source=_SRC.format(res=512, p="31M", f="33.7"), notes=_NOTE_HI.format(f="33.7", d="0.6%"))),
        "maxvit_small_tf_224": variant(**_S, window_size=7, card=Card(
            params_m=68.93, macs_g=11.66, top1=84.45, drop_path_rate=0.3, **_224,
            source=_SRC.format(res=224, p="69M", f="11.7"))),
        "maxvit_small_tf_384": variant(**_S, window_size=12, card=Card(
            params_m=69.02, macs_g=35.87, top1=85.74, input_size=(3, 384, 384), **_HI,
            source=_SRC.format(res=384, p="69M", f="36.1"), notes=_NOTE_HI.format(f="36.1", d="0.6%"))),
        "maxvit_small_tf_512": variant(**_S, window_size=16, card=Card(
            params_m=69.13, macs_g=67.26, top1=86.19, input_size=(3, 512, 512), **_HI,
            source=_SRC.format(res=512, p="69M", f="67.6"), notes=_NOTE_HI.format(f="67.6", d="0.5%"))),
        "maxvit_base_tf_224": variant(**_B, window_size=7, card=Card(
            params_m=119.47, macs_g=24.04, top1=84.95, drop_path_rate=0.4, **_224,
            source=_SRC.format(res=224, p="119M", f="24.2"))),
        "maxvit_base_tf_384": variant(**_B, window_size=12, card=Card(
            params_m=119.65, macs_g=73.8, top1=86.34, input_size=(3, 384, 384), **_HI,
            source=_SRC.format(res=384, p="119M", f="74.2"), notes=_NOTE_HI.format(f="74.2", d="0.5%"))),
        "maxvit_base_tf_512": variant(**_B, window_size=16, card=Card(
            params_m=119.88, macs_g=138.02, top1=86.66, input_size=(3, 512, 512), **_HI,
            source=_SRC.format(res=512, p="119M", f="138.5"), notes=_NOTE_HI.format(f="138.5", d="0.3%"))),
        "maxvit_large_tf_224": variant(**_L, window_size=7, card=Card(
            params_m=211.79, macs_g=43.68, top1=85.17, drop_path_rate=0.6, **_224,
            source=_SRC.format(res=224, p="212M", f="43.9"))),
        "maxvit_large_tf_384": variant(**_L, window_size=12, card=Card(
            params_m=212.03, macs_g=132.55, top1=86.40, input_size=(3, 384, 384), **_HI,
            source=_SRC.format(res=384, p="212M", f="133.1"), notes=_NOTE_HI.format(f="133.1", d="0.4%"))),
        "maxvit_large_tf_512": variant(**_L, window_size=16, card=Card(
            params_m=212.33, macs_g=244.75, top1=86.70, input_size=(3, 512, 512), **_HI,
            source=_SRC.format(res=512, p="212M", f="245.4"), notes=_NOTE_HI.format(f="245.4", d="0.3%"))),
    })
