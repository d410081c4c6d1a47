"""HaloNets (Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
arXiv 2103.12731) as timm carries them (timm/models/byoanet.py, built by byobnet's config system).

ResNet-like networks: a stem (three 3x3 convs, "tiered" 24-32-64 channels, then a 3x3/2 max pool, or the last
conv strided when there is no pool; HaloNet-H1: a 7x7/2 conv and the max pool) -> four stages of residual
blocks -> an optional 1x1 conv-BN-act to `num_features` -> global average pool -> Linear. A block is

- "bottle": 1x1 conv-BN-act -> 3x3 conv-BN-act (the stage's stride; grouped with `group_size`) -> SE or ECA
  channel attention (when the network has one) -> 1x1 conv-BN, plus the shortcut, then act;
- "attn": 1x1 conv-BN-act -> halo attention (`layers.mixers.HaloAttention`, strided queries when the block
  opens a stride-2 stage) -> BN-act -> 1x1 conv-BN, plus the shortcut, then act.
- "bot" (halo2botnet50ts only): as "attn" with BoTNet's global bottleneck attention
  (`layers.mixers.BottleneckAttention`, 4 heads) on the last stage's 8x8 map, which fixes the input at 256x256.

The shortcut is the identity, or a 1x1 conv-BN (with the block's stride) where the shape changes. Which blocks
are attention blocks is given per stage (`blocks`), as byoanet's `interleave_blocks` lays them out. This is a
compact builder for exactly these patterns, not a port of byobnet. State-dict keys are timm's
(`stem.conv1.conv`, `stages.{i}.{j}.conv1_1x1.conv`, `.self_attn.q`, `.post_attn`, `final_conv`, `head.fc`), so
timm checkpoints load directly.

Input sizes: halo attention cuts its input map into `block_size` squares, so H and W must be multiples of the
block size times the map's stride at every attention block (`traits.input_multiple`: 128 for the 26/33-layer nets and
H1, 256 for HaloNet-50ts at the default block size 8); anything else raises ValueError naming that multiple.
`block_sizes` (one per stage) may be set to take other sizes: scale() sets them from the input size (the
largest divisor of each stage's map side up to the variant's block size, even where the queries are strided).
Departures: none in eval. The residual branch's last BN is not zero-initialised (timm's `zero_init_last`), so
that every parameter gets a gradient from a fresh build.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..layers import (
    ClassifierHead,
    ConvBnAct,
    SqueezeExcite,
    checkpoint_seq,
    drop_path_or_identity,
    drop_path_rates,
    make_divisible,
)
from ..layers.mixers.bottleneck_attention import BottleneckAttention
from ..layers.mixers.halo_attention import HaloAttention
from .base import ConvScopeModel
from .features import feature_take_indices
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits

_ACTS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU}


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm followed by an activation, with BatchNorm's own parameter names (timm's `BatchNormAct2d`)."""

    def __init__(self, channels: int, act_layer: Callable[[], nn.Module]) -> None:
        super().__init__(channels)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al., arXiv 1910.03151): a 1-D conv across the pooled channels, kernel
    max(3, odd(|log2(C) + 1| / 2)), then a sigmoid gate (timm's `EcaModule`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        t = int(abs(math.log(channels, 2) + 1) / 2)
        k = max(t if t % 2 else t + 1, 3)
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3)).unsqueeze(1))
        return x * torch.sigmoid(y).transpose(1, 2).unsqueeze(-1)


def channel_attention(kind: str | None, channels: int) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "se":  # timm's SEModule: reduction 1/16 rounded to a multiple of 8, ReLU, biased 1x1 convs
        return SqueezeExcite(channels, make_divisible(channels / 16, 8, round_limit=0.0))
    if kind == "eca":
        return EfficientChannelAttention(channels)
    raise ValueError(f"attn_layer must be None, 'se' or 'eca'; got {kind!r}")


class HaloBlock(nn.Module):
    """A residual bottleneck whose middle is a 3x3 conv (+ channel attention) or halo attention (+ BN-act)."""

    def __init__(self, kind: str, in_chs: int, out_chs: int, stride: int, bottle_ratio: float,
                 act_layer: Callable[[], nn.Module], group_size: int = 0, attn_layer: str | None = None,
                 num_heads: int = 8, dim_head: int | None = None, block_size: int = 8, halo_size: int = 3,
                 feat_size: tuple[int, int] | None = None, drop_path: float = 0.0) -> None:
        super().__init__()
        if kind not in ("bottle", "attn", "bot"):
            raise ValueError(f"block kind must be 'bottle', 'attn' or 'bot'; got {kind!r}")
        mid = make_divisible(out_chs * bottle_ratio)
        if in_chs != out_chs or stride != 1:
            self.shortcut: nn.Module = ConvBnAct(in_chs, out_chs, 1, stride=stride)
        else:
            self.shortcut = nn.Identity()
        self.conv1_1x1 = ConvBnAct(in_chs, mid, 1, act_layer=act_layer)
        if kind == "bottle":
            groups = mid // group_size if group_size else 1
            self.conv2_kxk = ConvBnAct(mid, mid, 3, stride=stride, groups=groups, act_layer=act_layer)
            self.attn = channel_attention(attn_layer, mid)
        else:
            if kind == "bot":  # global attention over a fixed-size map (BoTNet), 4 heads as timm's default
                self.self_attn: nn.Module = BottleneckAttention(mid, feat_size, stride=stride, num_heads=4)
            else:
                self.self_attn = HaloAttention(mid, stride=stride, num_heads=num_heads, dim_head=dim_head,
                                               block_size=block_size, halo_size=halo_size)
            self.post_attn = BatchNormAct2d(mid, act_layer)
        self.conv3_1x1 = ConvBnAct(mid, out_chs, 1)
        self.drop_path = drop_path_or_identity(drop_path)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.conv1_1x1(x)
        if hasattr(self, "self_attn"):
            x = self.post_attn(self.self_attn(x))
        else:
            x = self.attn(self.conv2_kxk(x))
        return self.act(self.drop_path(self.conv3_1x1(x)) + shortcut)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the conv-BN units (ConvBnAct does), and the BatchNorm after bottleneck attention into its value
        projection (`BottleneckAttention.fuse_output_affine_`; its activation stays). The BatchNorm after halo
        attention stays: halo attention zero-pads its keys and values *after* the kv projection and the padded
        positions take part in the softmax, so a shift folded into the values would miss them (the reason a
        BatchNorm does not fold into a zero-padded conv either); and its activation separates it from conv3.
        Idempotent."""
        for m in (self.shortcut, self.conv1_1x1, getattr(self, "conv2_kxk", None), self.conv3_1x1):
            if isinstance(m, ConvBnAct):
                m.reparameterize()
        if isinstance(getattr(self, "self_attn", None), BottleneckAttention) and \
                isinstance(self.post_attn, nn.BatchNorm2d):
            from ..layers.reparam import bn_affine
            self.self_attn.fuse_output_affine_(*bn_affine(self.post_attn))
            self.post_attn = self.post_attn.act


class HaloStage(nn.Sequential):
    """One stage's blocks (keys `stages.{i}.{j}`, as timm's)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self, x)
        return super().forward(x)


class Stem(nn.Sequential):
    """"tiered": 3x3/2 conv (3C/8) -> 3x3 conv (C/2) -> 3x3 conv (C), then a 3x3/2 max pool, or the last conv at
    stride 2 without it; "7x7": a 7x7/2 conv then the max pool. Stride 4."""

    def __init__(self, in_chans: int, chs: int, kind: str, pool: bool, act_layer: Callable[[], nn.Module]) -> None:
        super().__init__()
        if kind == "tiered":
            widths, strides = (3 * chs // 8, chs // 2, chs), [2, 1, 1 if pool else 2]
            for i, (c, s) in enumerate(zip(widths, strides, strict=False)):
                self.add_module(f"conv{i + 1}", ConvBnAct(in_chans, c, 3, stride=s, act_layer=act_layer))
                in_chans = c
        elif kind == "7x7":
            if not pool:
                raise ValueError("the 7x7 stem is built with its max pool")
            self.conv1 = ConvBnAct(in_chans, chs, 7, stride=2, act_layer=act_layer)
        else:
            raise ValueError(f"stem_type must be 'tiered' or '7x7'; got {kind!r}")
        if pool:
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)


class HaloNet(ConvScopeModel):
    """HaloNet (see the module docstring): stem -> four stages of bottleneck / halo-attention blocks ->
    [1x1 conv to num_features] -> pool -> Linear.

    depths, dims: blocks and output channels per stage; blocks: per stage, the kind of each block ("bottle" or
    "attn"); bottle_ratios: per stage, the bottleneck width over the output width (rounded to a multiple of 8);
    strides: per stage; num_heads, block_sizes: halo attention per stage (a block size may be a pair: the stage's
    opening block's, on the stage's input map, and the other blocks'); dim_head (qk head width; default
    mid // num_heads) and halo_size: for all attention blocks.
    """

    @classmethod
    def traits_for(cls, *, depths: Sequence[int], dims: Sequence[int], blocks: Sequence[Sequence[str]],
                   strides: Sequence[int], block_sizes: Sequence[int | tuple[int, int]], num_features: int,
                   img_size: int | None) -> ModelTraits:
        """Stage strides from the stem's 4 and the stages' strides; input sides are multiples of every attention
        block's block size at its map's stride (and of the last stride); 'bot' blocks fix the input size."""
        reduction, multiple, reductions = 4, 1, []
        for i, pattern in enumerate(blocks):
            bs = block_sizes[i] if isinstance(block_sizes[i], (tuple, list)) else (block_sizes[i],) * 2
            for j, kind in enumerate(pattern):
                if kind == "attn":  # the block's input map must be cut into whole blocks
                    multiple = math.lcm(multiple, (bs[0] if j == 0 else bs[1]) * reduction)
                reduction *= strides[i] if j == 0 else 1
            reductions.append(reduction)
        m = math.lcm(multiple, reduction)
        bot = any("bot" in pattern for pattern in blocks) and img_size is not None
        return ModelTraits(channels=tuple(dims), reductions=tuple(reductions),
                           taps=tuple(f"stages.{i}" for i in range(len(depths))), num_features=num_features or dims[-1],
                           min_input_size=(m, m), input_multiple=m,
                           fixed_input_size=(img_size, img_size) if bot else None, reparameterizable=True)

    def __init__(self, depths: Sequence[int] = (2, 2, 2, 2), dims: Sequence[int] = (256, 512, 1024, 2048),
                 blocks: Sequence[Sequence[str]] = (("bottle",) * 2, ("bottle",) * 2, ("bottle", "attn"),
                                                    ("attn",) * 2), *,
                 bottle_ratios: Sequence[float] = (0.25, 0.25, 0.25, 0.25), strides: Sequence[int] = (1, 2, 2, 2),
                 stem_type: str = "tiered", stem_chs: int = 64, stem_pool: bool = True, act: str = "relu",
                 group_size: int = 0, attn_layer: str | None = None, num_heads: Sequence[int] = (8, 8, 8, 8),
                 dim_head: int | None = None, block_sizes: Sequence[int | tuple[int, int]] = (8, 8, 8, 8),
                 halo_size: int = 3,
                 num_features: int = 0, img_size: int | None = None, in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        if any("bot" in pattern for pattern in blocks):
            if img_size is None:
                raise ValueError("bottleneck attention ('bot' blocks) needs img_size: it is built for one map size")
        n = len(depths)
        for arg, name in ((dims, "dims"), (blocks, "blocks"), (bottle_ratios, "bottle_ratios"), (strides, "strides"),
                          (num_heads, "num_heads"), (block_sizes, "block_sizes")):
            if len(arg) != n:
                raise ValueError(f"{name} must have one entry per stage ({n}); got {len(arg)}")
        for i, (d, pattern) in enumerate(zip(depths, blocks, strict=False)):
            if len(pattern) != d:
                raise ValueError(f"blocks[{i}] must give the kind of each of the stage's {d} blocks; got {pattern}")
        self.traits = HaloNet.traits_for(depths=depths, dims=dims, blocks=blocks, strides=strides,
                                         block_sizes=block_sizes, num_features=num_features, img_size=img_size)
        if act not in _ACTS:
            raise ValueError(f"act must be one of {sorted(_ACTS)}; got {act!r}")
        act_layer = _ACTS[act]
        self.stem = Stem(in_chans, stem_chs, stem_type, stem_pool, act_layer)
        dpr = drop_path_rates(drop_path_rate, depths)
        stages, prev, reduction = [], stem_chs, 4
        for i in range(n):
            stage_blocks = []
            bs = block_sizes[i] if isinstance(block_sizes[i], (tuple, list)) else (block_sizes[i],) * 2
            for j, kind in enumerate(blocks[i]):
                stride = strides[i] if j == 0 else 1
                block_size = bs[0] if j == 0 else bs[1]
                if kind == "bot" and stride != 1:
                    raise ValueError("'bot' blocks are built at stride 1 here (halo2botnet's)")
                reduction *= stride
                stage_blocks.append(HaloBlock(
                    kind, prev, dims[i], stride, bottle_ratios[i], act_layer, group_size=group_size,
                    attn_layer=attn_layer, num_heads=num_heads[i], dim_head=dim_head, block_size=block_size,
                    halo_size=halo_size, drop_path=dpr[i][j],
                    feat_size=(img_size // reduction,) * 2 if kind == "bot" else None))
                prev = dims[i]
            stages.append(HaloStage(stage_blocks))
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.final_conv: nn.Module = ConvBnAct(prev, num_features, 1, act_layer=act_layer) if num_features else \
            nn.Identity()
        self.num_features = num_features or prev
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate=drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        h, w = x.shape[-2:]
        m = self.traits.input_multiple
        if h % m or w % m:
            raise ValueError(f"{self.model_name} needs H and W multiples of {m} (halo attention cuts each map into "
                             f"whole blocks); got {h}x{w}")

    # the optional final 1x1 conv follows the last stage: part of the features, not of the stage taps
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(super().forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        out = super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)
        if intermediates_only:
            return out
        final, inter = out
        _, max_index = feature_take_indices(len(self.stages), indices)
        if not stop_early or max_index == len(self.stages) - 1:
            final = self.final_conv(final)
        return final, inter

    def prune_intermediate_layers(self, indices: int | Sequence[int] | None = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        _, max_index = feature_take_indices(len(self.stages), indices)
        cut = max_index < len(self.stages) - 1 or prune_norm
        take = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if cut:
            self.final_conv = nn.Identity()
        elif not isinstance(self.final_conv, nn.Identity):
            self.num_features = self.final_conv.conv.out_channels
        return take


def _fit_block(hw: tuple[int, int], red: int, step: int, want: int) -> int:
    """The multiple of `step` dividing both map sides at reduction `red` nearest `want` in ratio (smaller on a tie)."""
    sides = [s // red for s in hw]
    ks = [k for k in range(step, min(sides) + 1, step) if all(side % k == 0 for side in sides)]
    return min(ks, key=lambda k: (abs(math.log(k / want)), k))


def _block_sizes_at(arch: dict, hw: tuple[int, int]) -> dict:
    """Block sizes for an input size: per stage, the common divisor of the attention blocks' map sides nearest the
    variant's block size (in ratio; the smaller on a tie), even for a stage opened by a strided attention block (its
    query grid is the block halved); that opening block gets its own size when the two differ."""
    sizes, reduction = [], 4
    for i, pattern in enumerate(arch["blocks"]):
        want = arch.get("block_sizes", (8,) * len(arch["blocks"]))[i]
        want = want if isinstance(want, int) else max(want)
        stride = arch.get("strides", (1, 2, 2, 2))[i]
        first = _fit_block(hw, reduction, stride, want) if pattern[0] == "attn" else want
        rest = _fit_block(hw, reduction * stride, 1, want) if "attn" in pattern[1:] else first
        first = rest if pattern[0] != "attn" else first
        sizes.append(first if first == rest else (first, rest))
        reduction *= stride
    out = dict(block_sizes=tuple(sizes))
    if any("bot" in pattern for pattern in arch["blocks"]):
        out["img_size"] = hw[0]
    return out


def _width_quantum(arch: dict, i: int) -> int:
    """Grouped 3x3 convs need the bottleneck width (width x ratio) to be a multiple of the group size."""
    gs = arch.get("group_size", 0)
    return max(8, round(gs / arch.get("bottle_ratios", (0.25,) * len(arch["dims"]))[i])) if gs else 8


_B, _A = "bottle", "attn"
_SRC = ("timm's HaloNets (timm/models/byoanet.py @aa4b585): params from results-imagenet.csv, MACs (fvcore) from "
        "benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv @aa4b585, top-1 from results-imagenet.csv (timm's own "
        "weights, 256)")
_TIMM_REPO = "huggingface/pytorch-image-models"
_R50 = dict(depths=(3, 4, 6, 3), dims=(256, 512, 1024, 2048))
_R26 = dict(depths=(2, 2, 2, 2), dims=(256, 512, 1024, 2048))

register_family(
    "halonet", HaloNet,
    paper=Paper("Scaling Local Self-Attention for Parameter Efficient Visual Backbones", "2103.12731",
                _TIMM_REPO),  # the paper released no code: timm is the reference
    spec=ArchSpec(depths="depths", widths="dims", per_block=("blocks",), width_quantum=_width_quantum,
                  input_step=32, at_input_size=_block_sizes_at),
    timm=True, card=Card(input_size=(3, 256, 256), crop_pct=0.94, repo=_TIMM_REPO, source=_SRC),
    variants={
        "halonet_h1": variant(
            depths=(3, 3, 10, 3), dims=(64, 128, 256, 512), blocks=((_A,) * 3, (_A,) * 3, (_A,) * 10, (_A,) * 3),
            bottle_ratios=(1.0,) * 4, stem_type="7x7", halo_size=3,
            card=Card(params_m=8.1, macs_g=3.0, top1=None, crop_pct=0.95,
                      source=_SRC.replace("params from results-imagenet.csv", "params from the benchmark csv"),
                      notes="untrained in timm (no weights, no top-1); the paper's H1 (79.9 top-1) differs in "
                            "details timm does not reproduce")),
        "halonet26t": variant(
            **_R26, blocks=((_B, _B), (_B, _B), (_B, _A), (_A, _A)), halo_size=2,
            card=Card(params_m=12.48, macs_g=3.19, top1=79.134, crop_pct=0.95)),
        "sehalonet33ts": variant(
            depths=(2, 3, 3, 2), dims=(256, 512, 1024, 1536),
            blocks=((_B, _B), (_B, _B, _A), (_B, _B, _A), (_A, _A)), bottle_ratios=(0.25, 0.25, 0.25, 0.333),
            stem_pool=False, act="silu", attn_layer="se", num_features=1280, halo_size=3,
            card=Card(params_m=13.69, macs_g=3.55, top1=80.976)),
        "halonet50ts": variant(
            **_R50, blocks=((_B,) * 3, (_B, _B, _B, _A), (_B, _A) * 3, (_B, _A, _B)), act="silu",
            num_heads=(8, 4, 8, 8), halo_size=3,
            card=Card(params_m=22.73, macs_g=5.3, top1=81.64)),
        "halo2botnet50ts_256": variant(
            **_R50, blocks=((_B,) * 3, (_B, _A) * 2, (_B, _A) * 3, (_B, "bot", _B)), act="silu", stem_pool=False,
            halo_size=3, img_size=256,
            card=Card(params_m=22.64, macs_g=5.02, top1=82.084, crop_pct=0.95,
                      notes="fixed input size: the last stage's bottleneck attention is built for the 8x8 map")),
        "eca_halonext26ts": variant(
            **_R26, blocks=((_B, _B), (_B, _B), (_B, _A), (_A, _A)), group_size=16, act="silu", attn_layer="eca",
            halo_size=2, dim_head=16,
            card=Card(params_m=10.76, macs_g=2.44, top1=79.518)),
    })
