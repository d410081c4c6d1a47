"""RMT (Fan et al., "RMT: Retentive Networks Meet Vision Transformers", CVPR 2024, arXiv 2309.11523).

A four-stage hierarchy of channels-last blocks whose token mixer is Manhattan self-attention (MaSA,
`convscope.layers.mixers.manhattan_attention`): explicit spatial decay gamma^(|dx|+|dy|) per head, decomposed
along W then H in the first stages (all but the last in S/B/L, the first two in T) and full 2-D in the others.
Each block: x += CPE(x) (3x3 depthwise conv); x += gamma1 * MaSA(LN(x)); x += gamma2 * FFN(LN(x)), the FFN being
Linear -> GELU -> (+ 3x3 depthwise conv, residual) -> Linear. Stem: four 3x3 convs with BatchNorm (stride 2, 1,
2, 1; GELU between); downsampling: 3x3 stride-2 conv + BatchNorm; head: Linear(C, 1024) -> BatchNorm -> Swish
-> global average pool -> Linear.

timm does not carry RMT: the state-dict keys are convscope's own, and `load_checkpoint(..., source="official")`
maps those of qhfan/RMT (classfication_release/RMT.py). The per-stage decay and rotary-angle buffers are kept in
the state dict, as the official checkpoints keep them.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import drop_path_or_identity, init_trunc_normal, layer_scale, layer_scale_parameter
from ..layers.mixers.manhattan_attention import ManhattanRelPos, ManhattanSelfAttention
from ..layers.reparam import fuse_bn_into_conv_, reparameterize_
from .base import ConvScopeModel, Stage
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy


def _dwconv_nhwc(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class RMTFeedForward(nn.Module):
    """fc1 -> GELU -> h + dwconv3x3(h) -> fc2 on channels-last tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(x))
        return self.fc2(x + _dwconv_nhwc(self.dwconv, x))


class RMTBlock(nn.Module):
    """x += CPE(x); x += DropPath(gamma1 * MaSA(LN(x))); x += DropPath(gamma2 * FFN(LN(x))), channels-last."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, decomposed: bool = False,
                 ls_init_value: float | None = None, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ManhattanSelfAttention(dim, num_heads, decomposed)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RMTFeedForward(dim, int(mlp_ratio * dim))
        self.gamma1 = layer_scale_parameter(dim, ls_init_value)
        self.gamma2 = layer_scale_parameter(dim, ls_init_value)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor, rel_pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = x + _dwconv_nhwc(self.pos, x)
        x = x + self.drop_path(layer_scale(self.attn(self.norm1(x), rel_pos), self.gamma1, channels_first=False))
        return x + self.drop_path(layer_scale(self.mlp(self.norm2(x)), self.gamma2, channels_first=False))


class RMTStage(Stage):
    """Downsampling (NCHW), then the blocks on channels-last maps sharing the stage's `relpos` terms."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module], relpos: ManhattanRelPos) -> None:
        super().__init__(downsample, blocks)
        self.relpos = relpos

    def reparameterize(self) -> None:
        """Deploy form: the downsampling conv -> BN folded, each block's q, k, v merged into one projection."""
        reparameterize_(self.downsample)
        for blk in self.blocks:
            blk.attn.merge_qkv_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        rel_pos = self.relpos(x.shape[1], x.shape[2])
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, rel_pos, use_reentrant=False) if ckpt else blk(x, rel_pos)
        return x.permute(0, 3, 1, 2)


class RMTHead(nn.Module):
    """Linear(C, hidden) per position -> BatchNorm -> Swish -> global average pool -> (dropout) -> fc."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.hidden = hidden
        self.proj = nn.Linear(in_features, hidden)
        self.norm = nn.BatchNorm2d(hidden)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def reparameterize(self) -> None:
        """Deploy form: the BatchNorm folds into the per-position projection before it."""
        if isinstance(self.norm, nn.BatchNorm2d):
            fuse_bn_into_conv_(self.proj, self.norm)
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        x = self.drop(F.silu(x).mean((2, 3)))
        return x if pre_logits else self.fc(x)


def _conv_bn(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout)]


class RMT(ConvScopeModel):
    """RMT: conv stem (/4) -> four stages of MaSA blocks (stages 2-4 opened by a 3x3/2 conv + BN) -> head.

    decomposed: per stage, MaSA decomposed along W and H (official `chunkwise_recurrents`) or full 2-D.
    heads_ranges / initial_value: the decay gamma_h = 1 - 2^(-initial_value - heads_range * h / num_heads).
    layer_scales: per stage, whether blocks carry layer scale (initialised to `ls_init_value`).
    """

    @classmethod
    def traits_for(cls, *, dims: Sequence[int]) -> ModelTraits:
        return hierarchy(dims, reparameterizable=True)  # conv-BN stem, downsamplings and head

    def __init__(self, depths: Sequence[int] = (2, 2, 8, 2), dims: Sequence[int] = (64, 128, 256, 512),
                 num_heads: Sequence[int] = (4, 4, 8, 16), heads_ranges: Sequence[float] = (4, 4, 6, 6),
                 mlp_ratios: Sequence[float] = (3, 3, 3, 3), decomposed: Sequence[bool] = (True, True, False, False),
                 layer_scales: Sequence[bool] = (False, False, False, False), *, initial_value: float = 2.0,
                 ls_init_value: float = 1e-6, head_hidden_size: int = 1024, in_chans: int = 3,
                 num_classes: int = 1000, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = RMT.traits_for(dims=dims)
        half = dims[0] // 2
        self.stem = nn.Sequential(*_conv_bn(in_chans, half, 2), nn.GELU(), *_conv_bn(half, half, 1), nn.GELU(),
                                  *_conv_bn(half, dims[0], 2), nn.GELU(), *_conv_bn(dims[0], dims[0], 1))
        self.build_stages(
            depths, dims, drop_path_rate,
            downsample=lambda i: nn.Sequential(*_conv_bn(dims[i - 1], dims[i], 2)),
            block=lambda i, j, dp: RMTBlock(dims[i], num_heads[i], mlp_ratios[i], decomposed[i],
                                            ls_init_value if layer_scales[i] else None, dp),
            stage=lambda i, down, blocks: RMTStage(down, blocks, ManhattanRelPos(
                dims[i], num_heads[i], initial_value, heads_ranges[i], decomposed[i])))
        self.head_hidden_size = head_hidden_size
        self.head = RMTHead(dims[-1], head_hidden_size, num_classes, drop_rate)
        init_trunc_normal(self)


# -- official checkpoints ----------------------------------------------------------------------------------------
_BLOCK_RENAMES = (
    ("retention_layer_norm.", "norm1."), ("final_layer_norm.", "norm2."), ("retention.", "attn."),
    ("ffn.", "mlp."), ("lepe.conv.", "lepe."), ("dwconv.conv.", "dwconv."), ("pos.conv.", "pos."),
    ("gamma_1", "gamma1"), ("gamma_2", "gamma2"),
)


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """qhfan/RMT keys -> ours: patch_embed.proj -> stem; layers.i.{blocks, Relpos} -> stages.i.{blocks, relpos};
    layers.i.downsample.{reduction, norm} -> stages.(i+1).downsample.{0, 1}; proj / norm / head -> head.proj /
    head.norm / head.fc; layer-scale vectors (1, 1, 1, C) -> (C,)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("patch_embed.proj."):
            k = "stem." + k[len("patch_embed.proj."):]
        elif m := re.match(r"layers\.(\d+)\.downsample\.(reduction|norm)\.(.*)", k):
            k = f"stages.{int(m[1]) + 1}.downsample.{0 if m[2] == 'reduction' else 1}.{m[3]}"
        elif m := re.match(r"layers\.(\d+)\.Relpos\.(.*)", k):
            k = f"stages.{m[1]}.relpos.{m[2]}"
        elif m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.*)", k):
            rest = m[3]
            for a, b in _BLOCK_RENAMES:
                rest = rest.replace(a, b)
            if rest in ("gamma1", "gamma2"):
                v = v.reshape(-1)
            k = f"stages.{m[1]}.blocks.{m[2]}.{rest}"
        elif k.split(".")[0] in ("proj", "norm"):
            k = "head." + k
        elif k in ("head.weight", "head.bias"):  # ours (head.fc.*, head.proj.*) pass through
            k = "head.fc." + k[len("head."):]
        out[k] = v
    return out


# -- variants ----------------------------------------------------------------------------------------------------
def _heads_quantum(arch, i: int) -> int:
    """Every stage's width splits into num_heads heads of an even width (rotary pairs)."""
    return 2 * arch["num_heads"][i]


_SRC = ("params: n_parameters in qhfan/RMT RMT_log/{log}.txt @32ea214 (the README rounds it to {readme_p}M); "
        "top-1: README @32ea214; MACs: fvcore 0.1.5 FlopCountAnalysis (what the official main.py prints) run on "
        "classfication_release/RMT.py {ctor}() @32ea214 at 224 ({macs}G; the README prints {readme_g}G); drop "
        "path: {ctor}() @32ea214")
_MACS_NOTE = ("the README's {readme_g}G is not what fvcore gives on the released code ({macs}G, {gap}); the card "
              "holds the fvcore count of the official model, which ours reproduces exactly")

register_family(
    "rmt", RMT, paper=Paper("RMT: Retentive Networks Meet Vision Transformers", "2309.11523", "qhfan/RMT"),
    spec=ArchSpec(depths="depths", widths="dims", width_quantum=_heads_quantum),
    converter=convert_official,
    card=Card(crop_pct=0.875, interpolation="bicubic"),
    variants={
        "rmt_tiny": variant(
            depths=(2, 2, 8, 2), dims=(64, 128, 256, 512), num_heads=(4, 4, 8, 16), heads_ranges=(4, 4, 6, 6),
            mlp_ratios=(3, 3, 3, 3), decomposed=(True, True, False, False), aliases=("rmt_t",), card=Card(
                params_m=14.334, macs_g=2.651, top1=82.4, drop_path_rate=0.1,
                source=_SRC.format(log="rmt_t", readme_p=14, readme_g=2.5, ctor="RMT_T3", macs="2.651"),
                notes=_MACS_NOTE.format(readme_g=2.5, macs="2.651", gap="+6.0%"))),
        "rmt_small": variant(
            depths=(3, 4, 18, 4), dims=(64, 128, 256, 512), num_heads=(4, 4, 8, 16), heads_ranges=(4, 4, 6, 6),
            mlp_ratios=(4, 4, 3, 3), decomposed=(True, True, True, False), aliases=("rmt_s",), card=Card(
                params_m=26.967, macs_g=4.800, top1=84.1, drop_path_rate=0.15,
                source=_SRC.format(log="rmt_s", readme_p=27, readme_g=4.5, ctor="RMT_S", macs="4.800"),
                notes=_MACS_NOTE.format(readme_g=4.5, macs="4.800", gap="+6.7%"))),
        "rmt_base": variant(
            depths=(4, 8, 25, 8), dims=(80, 160, 320, 512), num_heads=(5, 5, 10, 16), heads_ranges=(5, 5, 6, 6),
            mlp_ratios=(4, 4, 3, 3), decomposed=(True, True, True, False), layer_scales=(False, False, True, True),
            aliases=("rmt_b",), card=Card(
                params_m=54.155, macs_g=10.414, top1=85.0, drop_path_rate=0.4,
                source=_SRC.format(log="rmt_m", readme_p=54, readme_g=9.7, ctor="RMT_M2", macs="10.414"),
                notes=_MACS_NOTE.format(readme_g=9.7, macs="10.414", gap="+7.4%"))),
        "rmt_large": variant(
            depths=(4, 8, 25, 8), dims=(112, 224, 448, 640), num_heads=(7, 7, 14, 20), heads_ranges=(6, 6, 6, 6),
            mlp_ratios=(4, 4, 3, 3), decomposed=(True, True, True, False), layer_scales=(False, False, True, True),
            aliases=("rmt_l",), card=Card(
                params_m=95.465, macs_g=19.545, top1=85.5, drop_path_rate=0.5,
                source=_SRC.format(log="rmt_l", readme_p=95, readme_g=18.2, ctor="RMT_L6", macs="19.545"),
                notes=_MACS_NOTE.format(readme_g=18.2, macs="19.545", gap="+7.4%"))),
    })
