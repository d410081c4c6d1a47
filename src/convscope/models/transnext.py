"""TransNeXt (Shi, "TransNeXt: Robust Foveal Visual Perception for Vision Transformers", CVPR 2024,
arXiv 2311.17132).

A PVT-shaped four-stage transformer: overlapping patch embeddings (7x7/4 conv, then 3x3/2 convs, each with a
LayerNorm), blocks `x += DropPath(Attn(LN(x))); x += DropPath(ConvGLU(LN(x)))`, a LayerNorm closing each stage,
global average pool and a linear classifier. Stages 1-3 use aggregated attention
(`convscope.layers.mixers.aggregated_attention`: a 3x3 pixel-focused window plus keys pooled by sr = 8, 4, 2),
stage 4 full length-scaled cosine attention; the convolutional GLU is
fc1 -> (GELU(dw3x3(x1)) * x2) -> fc2 with hidden width int(2/3 * mlp_ratio * C).

The position tables and the pooled-key grid are sized for the input the model is built for (`img_size`, 224 by
default, as the official code does): another size is a ValueError; build with `img_size=` (the official
`pretrain_size` scales the relative coordinates of a model fine-tuned at another size, e.g. 224 for the 384
models).

timm does not carry TransNeXt: the state-dict keys are convscope's own, and
`load_checkpoint(..., source="official")` maps those of DaiShiResearch/TransNeXt (classification/transnext.py).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import ClassifierHead, drop_path_or_identity, to_2tuple
from ..layers.mixers.aggregated_attention import AggregatedAttention, relative_position_cpb
from ..layers.mixers.length_scaled_attention import LengthScaledAttention
from .base import ConvScopeModel, Stage
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy


class ConvGLU(nn.Module):
    """Convolutional GLU: fc1 (C -> 2h) split into gate and value; gate -> 3x3 dw conv -> GELU; times value; fc2."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(2 * hidden / 3)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x, v = self.fc1(x).chunk(2, dim=-1)
        B, N, C = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        return self.drop(self.fc2(self.drop(self.act(x) * v)))


class TransNeXtBlock(nn.Module):
    """x += DropPath(Attn(LN(x))); x += DropPath(ConvGLU(LN(x))) on (B, N, C) tokens; aggregated attention
    when sr_ratio > 1, full length-scaled attention when it is 1."""

    def __init__(self, dim: int, num_heads: int, input_resolution: tuple[int, int], sr_ratio: int,
                 mlp_ratio: float, window_size: int = 3, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if sr_ratio == 1:
            self.attn = LengthScaledAttention(dim, num_heads, input_resolution, attn_drop=attn_drop, proj_drop=drop)
        else:
            self.attn = AggregatedAttention(dim, num_heads, input_resolution, sr_ratio, window_size,
                                            attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvGLU(dim, int(dim * mlp_ratio), drop)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor, H: int, W: int, rel_index: torch.Tensor,
                rel_table: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W, rel_index, rel_table))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class OverlapPatchEmbed(nn.Module):
    """Conv (k x k, stride s, padding k // 2) then LayerNorm over channels (eps 1e-5); NCHW in and out."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2)
        self.norm = nn.LayerNorm(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TransNeXtStage(Stage):
    """Patch embedding (stages 2-4), blocks on tokens sharing the stage's position tables, closing LayerNorm."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module], dim: int,
                 rel_tables: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__(downsample, blocks)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.register_buffer("rel_index", rel_tables[0], persistent=False)
        self.register_buffer("rel_table", rel_tables[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            args = (x, H, W, self.rel_index, self.rel_table)
            x = checkpoint(blk, *args, use_reentrant=False) if ckpt else blk(*args)
        return self.norm(x).transpose(1, 2).reshape(B, C, H, W)


class TransNeXt(ConvScopeModel):
    """TransNeXt: 7x7/4 patch embedding -> four stages (3x3/2 patch embeddings between) -> mean -> Linear.

    sr_ratios: per stage, the pooling factor of the aggregated attention (1: full attention).
    img_size: the (square or (H, W)) input the position tables are built for; the only size the model takes.
    pretrain_size: the input size of pre-training, which scales the relative coordinates (default img_size).
    """

    @classmethod
    def traits_for(cls, *, dims: Sequence[int], img_size: int | tuple[int, int]) -> ModelTraits:
        """The position tables and pooled-key grid are built for `img_size`, the only input it takes."""
        img = tuple(to_2tuple(img_size))
        m = 2 ** (len(dims) + 1)
        return hierarchy(dims, min_input_size=img, input_multiple=m, fixed_input_size=img)

    def __init__(self, depths: Sequence[int] = (2, 2, 15, 2), dims: Sequence[int] = (48, 96, 192, 384),
                 num_heads: Sequence[int] = (2, 4, 8, 16), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), *, window_size: int = 3,
                 img_size: int | tuple[int, int] = 224, pretrain_size: int | tuple[int, int] | None = None,
                 in_chans: int = 3, num_classes: int = 1000, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = TransNeXt.traits_for(dims=dims, img_size=img_size)
        img = to_2tuple(img_size)
        pre = to_2tuple(pretrain_size or img)
        n = len(depths)
        if img[0] % 2 ** (n + 1) or img[1] % 2 ** (n + 1):
            raise ValueError(f"TransNeXt needs img_size multiples of {2 ** (n + 1)}; got {img[0]}x{img[1]}")
        res = [(img[0] // 2 ** (i + 2), img[1] // 2 ** (i + 2)) for i in range(n)]
        self.stem = OverlapPatchEmbed(in_chans, dims[0], 7, 4)

        def stage(i, down, blocks):
            keys = (res[i][0] // sr_ratios[i], res[i][1] // sr_ratios[i])
            pre_i = (pre[0] // 2 ** (i + 2), pre[1] // 2 ** (i + 2))
            return TransNeXtStage(down, blocks, dims[i], relative_position_cpb(res[i], keys, pre_i))

        self.build_stages(
            depths, dims, drop_path_rate,
            downsample=lambda i: OverlapPatchEmbed(dims[i - 1], dims[i], 3, 2),
            block=lambda i, j, dp: TransNeXtBlock(dims[i], num_heads[i], res[i], sr_ratios[i], mlp_ratios[i],
                                                  window_size, drop_rate, attn_drop_rate, dp),
            stage=stage)
        self.head = ClassifierHead(dims[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """The official init: trunc-normal(0.02) linears, He-normal (fan-out) convs, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.Tensor) and x.ndim == 4 and tuple(x.shape[-2:]) != self.traits.fixed_input_size:
            fh, fw = self.traits.fixed_input_size
            raise ValueError(f"{self.model_name} only takes {fh}x{fw} inputs (its position tables and pooled-key "
                             f"grid are built for them); got {x.shape[-2]}x{x.shape[-1]}: build it with "
                             f"img_size=({x.shape[-2]}, {x.shape[-1]}) (multiples of 32) for that size")
        super().check_input(x)


# -- official checkpoints ----------------------------------------------------------------------------------------
def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """DaiShiResearch/TransNeXt keys -> ours: patch_embed1 -> stem; patch_embed{i} -> stages.{i-1}.downsample;
    block{i}.{j} -> stages.{i-1}.blocks.{j} (mlp.dwconv.dwconv -> mlp.dwconv); norm{i} -> stages.{i-1}.norm;
    head -> head.fc."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("patch_embed1."):
            k = "stem." + k[len("patch_embed1."):]
        elif m := re.match(r"patch_embed(\d)\.(.*)", k):
            k = f"stages.{int(m[1]) - 1}.downsample.{m[2]}"
        elif m := re.match(r"block(\d)\.(\d+)\.(.*)", k):
            k = f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{m[3].replace('mlp.dwconv.dwconv.', 'mlp.dwconv.')}"
        elif m := re.match(r"norm(\d)\.(.*)", k):
            k = f"stages.{int(m[1]) - 1}.norm.{m[2]}"
        elif k in ("head.weight", "head.bias"):  # ours (head.fc.*, head.proj.*) pass through
            k = "head.fc." + k[len("head."):]
        out[k] = v
    return out


# -- variants ----------------------------------------------------------------------------------------------------
def _heads_quantum(arch, i: int) -> int:
    return arch["num_heads"][i]


def _at_input_size(arch, input_hw):
    """The position tables follow the input; the relative coordinates stay scaled to the pre-training size."""
    return dict(img_size=tuple(input_hw), pretrain_size=arch.get("pretrain_size") or arch.get("img_size", 224))


_SRC = ("params, MACs ('FLOPs', fvcore) and top-1: DaiShiResearch/TransNeXt README @c8a9974 ({p}M, {g}G, {t}); "
        "build: classification/transnext.py {ctor}() @c8a9974; drop path: classification/configs/{cfg}.py")

register_family(
    "transnext", TransNeXt,
    paper=Paper("TransNeXt: Robust Foveal Visual Perception for Vision Transformers", "2311.17132",
                "DaiShiResearch/TransNeXt"),
    spec=ArchSpec(depths="depths", widths="dims", width_quantum=_heads_quantum, input_step=32,
                  at_input_size=_at_input_size),
    converter=convert_official,
    card=Card(crop_pct=0.875, interpolation="bicubic"),  # 224: resize 256, centre crop; 384: warp
    variants={
        "transnext_micro": variant(
            depths=(2, 2, 15, 2), dims=(48, 96, 192, 384), num_heads=(2, 4, 8, 16), card=Card(
                params_m=12.8, macs_g=2.664, top1=82.5, drop_path_rate=0.15,
                source=_SRC.format(p=12.8, g=2.7, t=82.5, ctor="transnext_micro", cfg="transnext_micro")
                + "; MACs: fvcore 0.1.5 FlopCountAnalysis on transnext_micro() @c8a9974 (CUDA-free attention) gives "
                "2.664G, which the README rounds to 2.7G (1.3% away); the card holds the count")),
        "transnext_tiny": variant(
            depths=(2, 2, 15, 2), dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), card=Card(
                params_m=28.2, macs_g=5.7, top1=84.0, drop_path_rate=0.25,
                source=_SRC.format(p=28.2, g=5.7, t=84.0, ctor="transnext_tiny", cfg="transnext_tiny"))),
        "transnext_small": variant(
            depths=(5, 5, 22, 5), dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), card=Card(
                params_m=49.7, macs_g=10.3, top1=84.7, drop_path_rate=0.45,
                source=_SRC.format(p=49.7, g=10.3, t=84.7, ctor="transnext_small", cfg="transnext_small"))),
        "transnext_base": variant(
            depths=(5, 5, 23, 5), dims=(96, 192, 384, 768), num_heads=(4, 8, 16, 32), card=Card(
                params_m=89.7, macs_g=18.4, top1=84.8, drop_path_rate=0.6,
                source=_SRC.format(p=89.7, g=18.4, t=84.8, ctor="transnext_base", cfg="transnext_base"))),
        "transnext_micro_aaaa_256": variant(
            depths=(2, 2, 15, 2), dims=(48, 96, 192, 384), num_heads=(2, 4, 8, 16), sr_ratios=(16, 8, 4, 2),
            img_size=256, card=Card(
                params_m=13.1, macs_g=3.3, top1=82.6, drop_path_rate=0.15, input_size=(3, 256, 256),
                source=("params, MACs ('FLOPs') and top-1: DaiShiResearch/TransNeXt README @c8a9974, 'ImageNet-1K "
                        "256x256 pre-trained model fully utilizing aggregated attention at all stages' (13.1M, "
                        "3.3G, 82.6); build: classification/transnext.py transnext_micro_AAAA(img_size=256) "
                        "@c8a9974; drop path and input size: classification/configs/transnext_micro_AAAA_256.py; "
                        "crop: datasets.py (224/256 below 384)"),
                notes="A-A-A-A: aggregated attention in all four stages (pooling sr = 16, 8, 4, 2: a 4x4 pooled "
                      "grid at every stage at 256), no full-attention stage. MACs: our count (fvcore "
                      "convention) is 3.345 G, +1.4% from the README's 3.3 G but within its one-decimal rounding; "
                      "fvcore was not run on the official code for this variant")),
        "transnext_small_384": variant(
            depths=(5, 5, 22, 5), dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), img_size=384,
            pretrain_size=224, card=Card(
                params_m=49.7, macs_g=32.1, top1=86.0, drop_path_rate=0.7, input_size=(3, 384, 384), crop_pct=1.0,
                source=_SRC.format(p=49.7, g=32.1, t=86.0, ctor="transnext_small(img_size=384, pretrain_size=224)",
                                   cfg="finetune/transnext_small_384_ft"))),
        "transnext_base_384": variant(
            depths=(5, 5, 23, 5), dims=(96, 192, 384, 768), num_heads=(4, 8, 16, 32), img_size=384,
            pretrain_size=224, card=Card(
                params_m=89.7, macs_g=56.3, top1=86.2, drop_path_rate=0.8, input_size=(3, 384, 384), crop_pct=1.0,
                source=_SRC.format(p=89.7, g=56.3, t=86.2, ctor="transnext_base(img_size=384, pretrain_size=224)",
                                   cfg="finetune/transnext_base_384_ft"))),
    })
