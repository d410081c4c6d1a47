"""BiFormer (Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023,
arXiv 2303.08125).

A four-stage vision transformer whose attention is bi-level routing attention (`convscope.layers.mixers.bra`):
each of the 7x7 regions of a stage's map attends to the tokens of its top-k most relevant regions (k = 1, 4, 16 in
stages 1-3); stage 4 (a 7x7 map at 224) uses global attention. Stem: two 3x3 stride-2 conv-BN (GELU between);
downsampling: 3x3 stride-2 conv-BN. Block (pre-norm, channels-last inside): x + dw3x3(x) (conv position embedding),
then x + attention(LN(x)) and x + MLP(LN(x)) (ratio 3, GELU), LayerNorm eps 1e-6. Head: BatchNorm2d on the map,
global average pool, Linear.

Keys follow the official `models/biformer.py` inside blocks (`pos_embed`, `norm1`, `attn.qkv`, `attn.wo`,
`attn.lepe`, `mlp.0`, `mlp.3`) with this library's layout (`stem`, `stages.i.downsample`, `stages.i.blocks.j`,
`head.norm`, `head.fc`); `load_checkpoint(..., source="official")` maps the official keys.

Input sizes: the official classification models need every routed stage's map to be a multiple of 7 (inputs
whose side is a multiple of 112, e.g. 224); with `auto_pad=True` (the default here, the official option used for
detection and segmentation) other sizes are padded at the bottom/right inside each attention and cropped back,
which gives the same result wherever no padding is needed.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ..layers import ClassifierHead, drop_path_or_identity, init_trunc_normal
from ..layers.mixers.bra import BiLevelRoutingAttention, LePEAttention
from .base import ConvScopeModel
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy


class BiFormerBlock(nn.Module):
    """x + dw3x3(x); then (channels-last) x + DropPath(attn(LN(x))), x + DropPath(MLP(LN(x))).

    topk > 0: bi-level routing attention with `num_heads` heads over qk_dim; topk == -2: global attention with
    LePE (8 heads, as the official block builds it). stl: the Swin-Tiny-layout block (official
    `biformer_stl.py`): no conv position embedding, MLP keys `mlp.0` / `mlp.2`."""

    def __init__(self, dim: int, num_heads: int, n_win: int = 7, qk_dim: int | None = None, topk: int = 4,
                 mlp_ratio: float = 3, side_dwconv: int = 5, param_routing: bool = False,
                 diff_routing: bool = False, soft_routing: bool = False, auto_pad: bool = True,
                 drop_path: float = 0.0, stl: bool = False) -> None:
        super().__init__()
        self.stl = stl
        self.pos_embed: nn.Module = nn.Identity() if stl else nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk > 0:
            self.attn: nn.Module = BiLevelRoutingAttention(
                dim, num_heads, n_win, qk_dim, topk=topk, side_dwconv=side_dwconv, param_routing=param_routing,
                diff_routing=diff_routing, soft_routing=soft_routing, auto_pad=auto_pad)
        elif topk == -2:
            self.attn = LePEAttention(dim, side_dwconv=side_dwconv)
        else:
            raise ValueError(f"topk must be > 0 (routing) or -2 (global attention with LePE); got {topk}")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        # indices as the official nn.Sequential(Linear, DWConv or Identity, GELU, Linear) (STL: no middle slot)
        middle = [] if stl else [nn.Identity()]
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), *middle, nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x if self.stl else x + self.pos_embed(x)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


class BiFormer(ConvScopeModel):
    """BiFormer: conv stem (stride 4) -> four stages of BiFormer blocks (3x3 stride-2 conv-BN between) ->
    BatchNorm2d -> global average pool -> Linear.

    stl: the Swin-Tiny layout of the official ablation model (`models/biformer_stl.py`): 4x4 stride-4 patchify
    conv + BN stem, BN + 2x2 stride-2 conv downsampling, blocks without the conv position embedding.
    """

    @classmethod
    def traits_for(cls, *, embed_dim: Sequence[int]) -> ModelTraits:
        return hierarchy(embed_dim, reparameterizable=True)  # conv-BN stem and downsamplings fold

    def __init__(self, depth: tuple[int, ...] = (2, 2, 8, 2), embed_dim: tuple[int, ...] = (64, 128, 256, 512),
                 qk_dims: tuple[int, ...] | None = None, head_dim: int = 32, mlp_ratios: tuple[float, ...] = (3,) * 4,
                 topks: tuple[int, ...] = (1, 4, 16, -2), n_win: int = 7, side_dwconv: int = 5,
                 param_routing: bool = False, diff_routing: bool = False, soft_routing: bool = False,
                 auto_pad: bool = True, stl: bool = False, *, in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = BiFormer.traits_for(embed_dim=embed_dim)
        qk_dims = tuple(qk_dims or embed_dim)
        self.n_win, self.auto_pad, self.topks, self.stl = n_win, auto_pad, tuple(topks), stl
        e0 = embed_dim[0]
        if stl:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, e0, 4, stride=4), nn.BatchNorm2d(e0))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, e0 // 2, 3, stride=2, padding=1), nn.BatchNorm2d(e0 // 2), nn.GELU(),
                nn.Conv2d(e0 // 2, e0, 3, stride=2, padding=1), nn.BatchNorm2d(e0))

        def downsample(i: int) -> nn.Module:
            cin, cout = embed_dim[i - 1], embed_dim[i]
            if stl:
                return nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 2, stride=2))
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout))

        self.build_stages(
            depth, embed_dim, drop_path_rate, downsample=downsample,
            block=lambda i, j, dp: BiFormerBlock(
                embed_dim[i], qk_dims[i] // head_dim, n_win, qk_dims[i], topks[i], mlp_ratios[i], side_dwconv,
                param_routing, diff_routing, soft_routing, auto_pad, dp, stl))
        self.head = ClassifierHead(embed_dim[-1], num_classes, norm_layer=nn.BatchNorm2d, drop_rate=drop_rate,
                                   norm_first=True)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            init_trunc_normal(m)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if self.auto_pad:
            return
        h, w = x.shape[-2:]
        for i, topk in enumerate(self.topks):
            for _ in range(2 if i == 0 else 1):  # 3x3 stride-2 convs with padding 1 (STL: 4x4 / 2x2, floor)
                h, w = (h // 2, w // 2) if self.stl else ((h - 1) // 2 + 1, (w - 1) // 2 + 1)
            if topk > 0 and (h % self.n_win or w % self.n_win):
                raise ValueError(
                    f"{self.model_name} without auto_pad needs each routed stage's map to be a multiple of "
                    f"n_win={self.n_win} (inputs whose sides are multiples of {16 * self.n_win}, e.g. 224); "
                    f"got {x.shape[-2]}x{x.shape[-1]}, whose stage-{i + 1} map is {h}x{w}")


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """rayleizhu/BiFormer keys -> ours: `downsample_layers.0` -> `stem`, `downsample_layers.i` ->
    `stages.i.downsample`, `stages.i.j` -> `stages.i.blocks.j` (STL: already `stages.i.blocks.j`), `attn.qkv.qkv` ->
    `attn.qkv`, `router.emb` ->
    `router_emb`, `norm` / `head` -> `head.norm` / `head.fc`."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^downsample_layers\.0\.", "stem.", k)
        k = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", k)
        k = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
        k = k.replace(".attn.qkv.qkv.", ".attn.qkv.").replace(".attn.router.emb.", ".attn.router_emb.")
        k = re.sub(r"^norm\.", "head.norm.", k)
        k = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", k)
        out[k] = v
    return out


_SRC = ("top-1 and FLOPs (fvcore on the official code gives 2.228 G for T, as counted here): rayleizhu/BiFormer "
        "README @1697bbb; params_m: the official models/biformer.py @1697bbb counted (README: 13.1 / 25.5 / 56.8 "
        "M; STL: models/biformer_stl.py, README 28.4 M); drop path: the README's training example (S, 0.15)")

register_family(
    "biformer", BiFormer,
    paper=Paper("BiFormer: Vision Transformer with Bi-Level Routing Attention", "2303.08125", "rayleizhu/BiFormer"),
    spec=ArchSpec(depths="depth", widths="embed_dim", width_quantum=32),
    converter=convert_official,
    card=Card(source=_SRC),
    variants={
        "biformer_tiny": variant(
            depth=(2, 2, 8, 2), embed_dim=(64, 128, 256, 512),
            card=Card(params_m=13.142760, macs_g=2.228, top1=81.4,
                      notes="macs_g: fvcore on the official biformer_tiny() at 224 (2.22804416 G, equal to our "
                            "count); the README prints 2.2, 1.3% below")),
        "biformer_small": variant(
            depth=(4, 4, 18, 4), embed_dim=(64, 128, 256, 512),
            card=Card(params_m=25.536232, macs_g=4.5, top1=83.8, drop_path_rate=0.15)),
        "biformer_base": variant(
            depth=(4, 4, 18, 4), embed_dim=(96, 192, 384, 768),
            card=Card(params_m=56.804968, macs_g=9.8, top1=84.3)),
        "biformer_stl": variant(
            depth=(2, 2, 6, 2), embed_dim=(96, 192, 384, 768), mlp_ratios=(4, 4, 4, 4), stl=True,
            card=Card(params_m=28.372552, macs_g=4.6, top1=82.7,
                      notes="the Swin-Tiny-layout model of the paper's ablation (official models/biformer_stl.py)")),
    })
