"""LSNet (Wang et al., "LSNet: See Large, Focus Small", CVPR 2025, arXiv 2503.23135).

A lightweight ConvNet built on LS convolution (`convscope.layers.mixers.lsconv`: large-kernel perception makes
per-position 3x3 kernels, small-kernel aggregation applies them). Stem: three 3x3 stride-2 conv-BN (ReLU between);
four stages at strides 8, 16, 32, 64, stages 2-4 opened by a depthwise 3x3 stride-2 conv-BN and a 1x1 conv-BN.
Blocks alternate: even ones a RepVGG-style depthwise mixer (3x3 + 1x1 + identity) and squeeze-excite, odd ones an
LS convolution (stages 1-3) or LeViT-style attention with learned relative-position biases (stage 4); every block
ends with a conv-BN FFN (C -> 2C -> C, ReLU). Head: global average pool -> BatchNorm1d -> Linear.

Every conv carries a BatchNorm; `convscope.deploy.reparameterize_` folds them (and merges the RepVGG branches and
the head's BatchNorm), giving the official deploy form (`utils.replace_batchnorm`) on which the README counts
parameters and FLOPs. Keys follow the official code inside blocks with this library's layout (`stem.i`,
`stages.i.downsample.j`, `stages.i.blocks.j`, conv-BN `conv` / `bn`, `head.norm` / `head.fc`);
`load_checkpoint(..., source="official")` maps the official keys.

Distilled variants (lsnet_{t,s,b}_distill, the official `distillation=True` models trained with a teacher):
a second BN-Linear head `head_dist` on the same pooled features. As in the official code, evaluation returns the
mean of the two heads' logits; in training the mean too, unless `set_distilled_training(True)` asks for the pair
(head, head_dist) that a distillation loss takes (timm's convention for its distilled models; the official model
returns the pair whenever it is training).

Input sizes: both sides above 64 (below, the stage-4 attention sees a single token). The stage-4 attention biases are
a table over the (|dy|, |dx|) offsets of the stage-4 map at
`img_size` (4x4 at 224). Maps up to that size take the biases of their offsets; larger inputs raise ValueError
(build with a larger `img_size`, which changes the bias table, as the official code does).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBnAct, SqueezeExcite, drop_path_or_identity, init_trunc_normal, to_2tuple
from ..layers.mixers.lsconv import LSConv
from ..layers.reparam import fuse_bn_before_conv_, merge_parallel_convs, pad_kernel
from .base import ConvScopeModel
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy


def _half(n: int) -> int:
    """Output side of a 3x3 stride-2 conv with padding 1."""
    return (n - 1) // 2 + 1


def stage4_size(h: int, w: int) -> tuple[int, int]:
    """The stage-4 map of an h x w input: six 3x3 stride-2 convs (three in the stem, three downsamplings)."""
    for _ in range(6):
        h, w = _half(h), _half(w)
    return h, w


class RepVGGDW(nn.Module):
    """x + BN(dw3x3(x)) + BN(dw1x1(x)); `reparameterize()` merges all three into one biased dw 3x3 conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = ConvBnAct(dim, dim, 3, groups=dim)
        self.conv1: nn.Module = ConvBnAct(dim, dim, 1, groups=dim)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.conv(x)
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.merged:
            return
        self.conv.reparameterize()
        self.conv1.reparameterize()
        conv = self.conv.conv
        weight, bias = merge_parallel_convs([conv, self.conv1.conv])
        weight = weight + pad_kernel(torch.ones_like(weight[:, :, :1, :1]), 3)
        conv.weight, conv.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.conv1 = nn.Identity()
        self.merged = True


class LeViTAttention(nn.Module):
    """LeViT-style attention on an NCHW map: a 1x1 conv-BN makes q, k (key_dim per head) and v (`d` per head),
    q goes through a depthwise 3x3 conv-BN, scores get learned biases indexed by the (|dy|, |dx|) offset, and
    ReLU -> 1x1 conv-BN projects back. Runs through `scaled_dot_product_attention` with the biases as mask."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float,
                 resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.qkv = ConvBnAct(dim, self.dh + 2 * self.nh_kd, 1)
        self.dw = ConvBnAct(self.nh_kd, self.nh_kd, 3, groups=self.nh_kd)
        self.proj = nn.Sequential(nn.ReLU(), ConvBnAct(self.dh, dim, 1))
        self.resolution = rh, rw = resolution
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, rh * rw))

    def bias(self, h: int, w: int) -> torch.Tensor:
        """(heads, h*w, h*w) biases of an h x w map (h, w at most the table's resolution). The table is indexed
        as the official `attention_bias_idxs` is: offset (|dy|, |dx|) -> |dy| * res_w + |dx| (computed here, not
        stored, so that a model materialised from the meta device has no uninitialised index buffer)."""
        dev = self.attention_biases.device
        ys = torch.arange(h, device=dev).repeat_interleave(w)
        xs = torch.arange(w, device=dev).repeat(h)
        idx = (ys[:, None] - ys[None]).abs() * self.resolution[1] + (xs[:, None] - xs[None]).abs()
        return self.attention_biases[:, idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        q, k, v = self.qkv(x).split([self.nh_kd, self.nh_kd, self.dh], dim=1)
        q = self.dw(q)
        q = q.reshape(B, self.num_heads, self.key_dim, H * W).transpose(-2, -1)
        k = k.reshape(B, self.num_heads, self.key_dim, H * W).transpose(-2, -1)
        v = v.reshape(B, self.num_heads, self.d, H * W).transpose(-2, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(H, W).to(q.dtype))
        return self.proj(out.transpose(-2, -1).reshape(B, self.dh, H, W))


class FFN(nn.Module):
    """1x1 conv-BN (C -> hidden) -> ReLU -> 1x1 conv-BN (-> C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = ConvBnAct(dim, hidden, 1, act_layer=nn.ReLU)
        self.pw2 = ConvBnAct(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.pw1(x))


class LSNetBlock(nn.Module):
    """Even depth index: RepVGGDW (identity inside) -> SE(1/4). Odd: x + LSConv(x) in stages 1-3, x +
    DropPath(attention(x)) in stage 4. Then x + DropPath(FFN(x))."""

    def __init__(self, dim: int, index: int, attention: bool, key_dim: int = 16, num_heads: int = 8,
                 resolution: tuple[int, int] = (4, 4), drop_path: float = 0.0) -> None:
        super().__init__()
        self.shortcut = index % 2 == 1  # RepVGGDW holds its own identity branch
        if index % 2 == 0:
            self.mixer: nn.Module = RepVGGDW(dim)
            self.se: nn.Module = SqueezeExcite(dim, _se_channels(dim))
        else:
            self.se = nn.Identity()
            if attention:
                self.mixer = LeViTAttention(dim, key_dim, num_heads, dim / (key_dim * num_heads), resolution)
            else:
                self.mixer = LSConv(dim)
        self.mixer_drop_path = drop_path_or_identity(drop_path if attention else 0.0)
        self.ffn = FFN(dim, 2 * dim)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer_drop_path(self.mixer(x)) if self.shortcut else self.mixer(x)
        x = self.se(x)
        return x + self.drop_path(self.ffn(x))


def _se_channels(dim: int) -> int:
    """timm's SqueezeExcite(dim, 0.25) width: dim / 4 rounded to a multiple of 8 (at least 8)."""
    return max(8, int(dim / 4 + 4) // 8 * 8)


class LSNetHead(nn.Module):
    """BatchNorm1d -> Linear on the pooled features (the official `BN_Linear`); `reparameterize()` folds the
    BatchNorm into the Linear. pre_logits gives the pooled features."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        self.norm: nn.Module = nn.BatchNorm1d(self.in_features) if num_classes > 0 else nn.Identity()
        self.fc: nn.Module = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_trunc_normal(self.fc)
        self.norm.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if isinstance(self.norm, nn.BatchNorm1d):
            fuse_bn_before_conv_(self.norm, self.fc)
            self.norm = nn.Identity()


class LSNet(ConvScopeModel):
    """LSNet: conv-BN stem to stride 8 -> four stages (strides 8-64) of LSNet blocks -> BN-Linear head.

    img_size: the input size the stage-4 attention-bias table is built for (inputs up to it are taken).
    zero_init_last: initialise the last BatchNorm weight of the FFN and attention branches to zero, as the
        official code does for training from scratch; off by default so that every parameter receives a gradient
        at initialisation (this library's contract).
    distilled: add the distillation head `head_dist` (the official `distillation=True`); the logits are the mean
        of both heads (see `set_distilled_training` for the pair).
    """

    @classmethod
    def traits_for(cls, *, embed_dim: Sequence[int], depth: Sequence[int]) -> ModelTraits:
        """Stages at strides 8-64. Up to 64x64 the stage-4 map is one token: its attention reduces to v, and
        queries, keys and biases are dead, hence the 65x65 minimum."""
        return hierarchy(
            embed_dim, stem_reduction=8, min_input_size=(65, 65), reparameterizable=True,
            grad_free=(f"stages.{len(depth) - 1}.blocks.{depth[-1] - 1}.ffn.pw2.bn.bias",),
            grad_free_reason="the last block's last BatchNorm bias adds a per-channel constant to the map that is "
                             "pooled into the head's BatchNorm1d, which in train mode subtracts the batch mean and "
                             "so removes it")

    def __init__(self, embed_dim: tuple[int, ...] = (64, 128, 256, 384), depth: tuple[int, ...] = (0, 2, 8, 10),
                 num_heads: tuple[int, ...] = (3, 3, 3, 4), key_dim: int = 16,
                 img_size: int | tuple[int, int] = 224, zero_init_last: bool = False, distilled: bool = False, *,
                 in_chans: int = 3, num_classes: int = 1000, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = LSNet.traits_for(embed_dim=embed_dim, depth=depth)
        if len(embed_dim) != 4 or len(depth) != 4 or len(num_heads) != 4:
            raise ValueError("LSNet has four stages: embed_dim, depth and num_heads take four entries each")
        self.img_size = to_2tuple(img_size)
        self.attn_resolution = stage4_size(*self.img_size)
        e0 = embed_dim[0]
        self.stem = nn.Sequential(
            ConvBnAct(in_chans, e0 // 4, 3, stride=2, act_layer=nn.ReLU),
            ConvBnAct(e0 // 4, e0 // 2, 3, stride=2, act_layer=nn.ReLU),
            ConvBnAct(e0 // 2, e0, 3, stride=2))
        self.build_stages(
            depth, embed_dim, drop_path_rate, stem_reduction=8,
            downsample=lambda i: nn.Sequential(
                ConvBnAct(embed_dim[i - 1], embed_dim[i - 1], 3, stride=2, groups=embed_dim[i - 1]),
                ConvBnAct(embed_dim[i - 1], embed_dim[i], 1)),
            block=lambda i, j, dp: LSNetBlock(embed_dim[i], j, attention=i == 3, key_dim=key_dim,
                                              num_heads=num_heads[i], resolution=self.attn_resolution,
                                              drop_path=dp))
        self.head = LSNetHead(embed_dim[-1], num_classes)
        self.distilled = distilled
        self.distilled_training = False
        self.head_dist = LSNetHead(embed_dim[-1], num_classes) if distilled else None
        if zero_init_last:
            self._zero_init_last()

    def _zero_init_last(self) -> None:
        # the official Conv2d_BN(bn_weight_init=0) at the end of the FFN and attention branches
        for m in self.modules():
            if isinstance(m, FFN):
                nn.init.zeros_(m.pw2.bn.weight)
            elif isinstance(m, LeViTAttention):
                nn.init.zeros_(m.proj[1].bn.weight)

    # -- distillation head ---------------------------------------------------------------------------------------
    def set_distilled_training(self, enable: bool = True) -> None:
        """In training mode, return (head logits, head_dist logits) instead of their mean (distilled models)."""
        if self.head_dist is None and enable:
            raise ValueError(f"{self.model_name} has no distillation head; build it with distilled=True")
        self.distilled_training = enable

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if self.head_dist is None or pre_logits:
            return self.head(x, pre_logits=pre_logits)
        out, dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training:
            return out, dist
        return (out + dist) / 2

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if self.head_dist is not None:
            self.head_dist.reset(num_classes)

    def prune_intermediate_layers(self, indices=None, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        take = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_head:
            self.head_dist = None
            self.distilled_training = False
        return take

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        h4, w4 = stage4_size(*x.shape[-2:])
        rh, rw = self.attn_resolution
        if h4 > rh or w4 > rw:
            raise ValueError(
                f"{self.model_name}'s stage-4 attention biases cover maps up to {rh}x{rw} (inputs whose side s "
                f"gives ceil(s / 64) <= {rh}x{rw}, built for img_size={self.img_size[0]}x{self.img_size[1]}); "
                f"a {x.shape[-2]}x{x.shape[-1]} input gives {h4}x{w4}: build the model with img_size=(H, W)")


@torch.no_grad()
def lsnet_condition_(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Scale the last BatchNorm weight of every LSNet residual branch (RepVGGDW's two convs, LS convolution, the
    attention's projection, the FFN) by `scale`, in place; other modules are left alone.

    For tests with random weights: LSNet has no layer scale, so BatchNorm weights of magnitude ~1 at the end of
    every branch make activations grow ~1e5-fold over the blocks and saturate the squeeze-excite gates, and
    float32 then drifts ~1e-4 from float64 on its own. At 0.1 the two agree to ~3e-7.
    """
    for m in model.modules():
        if isinstance(m, RepVGGDW) and not m.merged:
            m.conv.bn.weight.mul_(scale)
            m.conv1.bn.weight.mul_(scale)
        elif isinstance(m, LSConv):
            m.bn.weight.mul_(scale)
        elif isinstance(m, LeViTAttention) and isinstance(m.proj[1].bn, nn.BatchNorm2d):
            m.proj[1].bn.weight.mul_(scale)
        elif isinstance(m, FFN) and isinstance(m.pw2.bn, nn.BatchNorm2d):
            m.pw2.bn.weight.mul_(scale)
    return model


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """jameslahm/lsnet keys -> ours (train form): `patch_embed.{0,2,4}` -> `stem.{0,1,2}`, `blocks{i}.{0,1}`
    of stages 2-4 -> `stages.{i-1}.downsample`, `Conv2d_BN.c` -> `conv`, `Residual.m` unwrapped, `head.bn/l` ->
    `head.norm/fc` (and the distilled checkpoints' `head_dist.bn/l` -> `head_dist.norm/fc`, which load into the
    `*_distill` variants); the derived `attention_bias_idxs` buffers are dropped."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith(".attention_bias_idxs"):  # derived: recomputed from the resolution
            continue
        k = re.sub(r"^patch_embed\.(\d+)\.", lambda m: f"stem.{int(m[1]) // 2}.", k)
        m = re.match(r"^blocks(\d)\.(\d+)\.(.*)$", k)
        if m:
            stage, idx, rest = int(m[1]) - 1, int(m[2]), m[3]
            if stage > 0 and idx < 2:
                k = f"stages.{stage}.downsample.{idx}.{rest}"
            else:
                k = f"stages.{stage}.blocks.{idx - (2 if stage > 0 else 0)}.{rest}"
        k = k.replace(".mixer.m.", ".mixer.").replace(".ffn.m.", ".ffn.")
        k = re.sub(r"\.c\.(weight|bias)$", r".conv.\1", k)
        k = re.sub(r"\.proj\.1\.c\.", ".proj.1.conv.", k)
        k = re.sub(r"^(head|head_dist)\.bn\.", r"\1.norm.", k)
        k = re.sub(r"^(head|head_dist)\.l\.", r"\1.fc.", k)
        out[k] = v
    return out


def _heads_quantum(arch, i: int) -> int:
    """Stage-4 widths must split into whole attention heads of key_dim channels; LKP needs multiples of 8."""
    return 8 * arch["num_heads"][i] if i == 3 else 8


_SRC = ("top-1 (non-distilled): jameslahm/lsnet README @cbe737c; macs_g: the official flops.py @cbe737c run "
        "(fvcore on the BN-fused form, SKA swapped for a 3x3 depthwise conv; the README prints 0.3 / 0.5 / 1.3 "
        "G); params_m: the official model/lsnet.py @cbe737c counted in its train form, deploy_params_m: the same "
        "after utils.replace_batchnorm (the README's 11.4 / 16.1 / 23.2 M)")

_SRC_DISTILL = ("top-1 (the README's figure marked * for distillation): jameslahm/lsnet README @cbe737c; params_m / "
                "deploy_params_m: the official model/lsnet.py @cbe737c with distillation=True counted in its train "
                "form / after utils.replace_batchnorm (the README prints the non-distilled model's); macs_g: the "
                "non-distilled model's flops.py figure plus the second head's C x 1000 multiply-accumulates (the "
                "README prints none for the distilled model)")

register_family(
    "lsnet", LSNet, paper=Paper("LSNet: See Large, Focus Small", "2503.23135", "jameslahm/lsnet"),
    spec=ArchSpec(depths="depth", widths="embed_dim", width_quantum=_heads_quantum,
                  at_input_size=lambda arch, hw: dict(img_size=tuple(hw))),
    converter=convert_official,
    card=Card(source=_SRC, macs_form="deploy", crop_pct=0.9),
    variants={
        "lsnet_t": variant(
            embed_dim=(64, 128, 256, 384), depth=(0, 2, 8, 10), num_heads=(3, 3, 3, 4),
            card=Card(params_m=11.409832, deploy_params_m=11.370488, macs_g=0.3163, top1=74.9,
                      notes="76.1 with distillation: lsnet_t_distill")),
        "lsnet_s": variant(
            embed_dim=(96, 192, 320, 448), depth=(1, 2, 8, 10), num_heads=(3, 3, 3, 4),
            card=Card(params_m=16.146304, deploy_params_m=16.098232, macs_g=0.5385, top1=77.8,
                      notes="79.0 with distillation: lsnet_s_distill")),
        "lsnet_b": variant(
            embed_dim=(128, 256, 384, 512), depth=(4, 6, 8, 10), num_heads=(3, 3, 3, 4),
            card=Card(params_m=23.313608, deploy_params_m=23.249320, macs_g=1.2475, top1=80.3,
                      notes="81.6 with distillation (lsnet_b_distill); the README's 1.3 G is not what its flops.py "
                            "gives (1.2475 G, which prints as 1.2)")),
        "lsnet_t_distill": variant(
            embed_dim=(64, 128, 256, 384), depth=(0, 2, 8, 10), num_heads=(3, 3, 3, 4), distilled=True,
            card=Card(params_m=11.795600, deploy_params_m=11.755488, macs_g=0.3167, top1=76.1, source=_SRC_DISTILL)),
        "lsnet_s_distill": variant(
            embed_dim=(96, 192, 320, 448), depth=(1, 2, 8, 10), num_heads=(3, 3, 3, 4), distilled=True,
            card=Card(params_m=16.596200, deploy_params_m=16.547232, macs_g=0.5389, top1=79.0, source=_SRC_DISTILL)),
        "lsnet_b_distill": variant(
            embed_dim=(128, 256, 384, 512), depth=(4, 6, 8, 10), num_heads=(3, 3, 3, 4), distilled=True,
            card=Card(params_m=23.827632, deploy_params_m=23.762320, macs_g=1.2480, top1=81.6, source=_SRC_DISTILL)),
    })
