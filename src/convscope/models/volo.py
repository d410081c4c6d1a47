"""VOLO (Yuan et al., "VOLO: Vision Outlooker for Visual Recognition", arXiv 2106.13112; sail-sg/volo).

A conv stem (7x7/2 conv + two 3x3 convs, BN-ReLU, then a 4x4/4 projection: stride 8) -> stage 1 of Outlookers
(outlook attention, `layers.mixers.OutlookAttention`, kernel 3, stride 2) -> a 2x2/2 conv -> a learned position
embedding on the stride-16 grid -> three stages of plain transformer blocks -> two class-attention blocks with a
class token -> LayerNorm -> head. Trained with token labelling, the network keeps its auxiliary head on the patch
tokens: at evaluation the logits are `head(cls) + 0.5 * max over tokens of aux_head(tokens)` (timm and official).

State-dict keys are timm's (`network.{0..4}`, `post_network`, `aux_head`), so timm checkpoints load directly.
Other input sizes: multiples of 16; the position embedding is resampled (bicubic, antialiased) to the token grid.
Departures: none in eval; the training-time "mix token" augmentation is not implemented (`forward_dense` gives the
class and per-token logits for a token-labelling loss). As in timm/official, Outlooker blocks get no drop path.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Mlp, drop_path_or_identity, init_trunc_normal
from ..layers.mixers.attention import Attention
from ..layers.mixers.outlook_attention import OutlookAttention
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits
from .vit_base import Block, TokenModel, resample_pos_embed


class MapAttention(Attention):
    """Global multi-head self-attention (scaled_dot_product_attention) on a channels-last map (B, H, W, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        return super().forward(x.reshape(B, H * W, C)).reshape(B, H, W, -1)


class ClassAttention(nn.Module):
    """The class token attends to all tokens (CaiT's class attention): (B, N, C) -> (B, 1, C)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        self.kv = nn.Linear(dim, 2 * inner, bias=qkv_bias)
        self.q = nn.Linear(dim, inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = self.q(x[:, :1]).reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, 1, -1))


class ClassBlock(nn.Module):
    """cls + ClassAttention(LN(tokens)), then cls + MLP(LN(cls)); the patch tokens pass through."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1] + self.drop_path(self.attn(self.norm1(x)))
        cls = cls + self.drop_path(self.mlp(self.norm2(cls)))
        return torch.cat([cls, x[:, 1:]], dim=1)


class PatchEmbed(nn.Module):
    """7x7/2 conv -> BN -> ReLU -> (3x3 conv -> BN -> ReLU) x 2 -> (patch/2)x(patch/2) conv: stride `patch_size`."""

    def __init__(self, in_chans: int, hidden_dim: int, embed_dim: int, patch_size: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (k, s) in enumerate(((7, 2), (3, 1), (3, 1))):
            layers += [nn.Conv2d(in_chans if i == 0 else hidden_dim, hidden_dim, k, stride=s, padding=k // 2,
                                 bias=False), nn.BatchNorm2d(hidden_dim), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden_dim, embed_dim, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x))


class Downsample(nn.Module):
    """2x2/2 conv on a channels-last map."""

    def __init__(self, in_dim: int, out_dim: int, patch_size: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class VOLO(TokenModel):
    """VOLO: stem -> Outlooker stage -> 2x2/2 conv -> (+ position embedding) -> three transformer stages ->
    class-attention blocks -> LN -> class head (+ 0.5 x the max of the token-labelling head at evaluation)."""

    units_name = "network"

    @classmethod
    def traits_for(cls, *, embed_dims: Sequence[int], patch_size: int) -> ModelTraits:
        """The Outlooker stage at the patch stride, the transformer stages at twice it; the features are the
        tokens after the class-attention blocks, class first."""
        return ModelTraits(channels=tuple(embed_dims), reductions=(patch_size,) + (patch_size * 2,) * 3,
                           taps=("network.0", "network.2", "network.3", "network.4"), num_features=embed_dims[-1],
                           input_multiple=patch_size * 2, features_fmt="NLC", num_prefix_tokens=1,
                           reparameterizable=True)

    def __init__(self, layers: tuple[int, ...] = (4, 4, 8, 2), embed_dims: tuple[int, ...] = (192, 384, 384, 384),
                 head_dims: tuple[int, ...] = (32, 32, 32, 32), *, img_size: int | tuple[int, int] = 224,
                 in_chans: int = 3, num_classes: int = 1000, patch_size: int = 8, stem_hidden_dim: int = 64,
                 mlp_ratio: float = 3.0, qkv_bias: bool = False, outlook_kernel: int = 3, num_post_layers: int = 2,
                 use_aux_head: bool = True, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = VOLO.traits_for(embed_dims=embed_dims, patch_size=patch_size)
        if len(layers) != 4 or len(embed_dims) != 4 or len(head_dims) != 4:
            raise ValueError("layers, embed_dims and head_dims need 4 entries; "
                             f"got {layers}, {embed_dims}, {head_dims}")
        if len(set(embed_dims[1:])) != 1:
            raise ValueError(f"stages 2-4 share one width (no downsampling between them); got {embed_dims}")
        for d, hd in zip(embed_dims, head_dims, strict=False):
            if d % hd:
                raise ValueError(f"each width must be a multiple of its head dim; got {embed_dims} and {head_dims}")
        heads = [d // hd for d, hd in zip(embed_dims, head_dims, strict=False)]
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        dim = embed_dims[-1]
        self.patch_embed = PatchEmbed(in_chans, stem_hidden_dim, embed_dims[0], patch_size)
        m = self.traits.input_multiple
        self.pos_embed = nn.Parameter(torch.zeros(1, img[0] // m, img[1] // m, dim))
        total = sum(layers)
        dpr = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]
        self.network = nn.ModuleList([
            nn.Sequential(*[Block(embed_dims[0], OutlookAttention(embed_dims[0], heads[0], outlook_kernel,
                                                                  outlook_kernel // 2, stride=2, qkv_bias=qkv_bias),
                                  mlp_ratio) for _ in range(layers[0])]),
            Downsample(embed_dims[0], embed_dims[1]),
        ])
        for i in range(1, 4):
            start = sum(layers[:i])
            self.network.append(nn.Sequential(*[
                Block(embed_dims[i], MapAttention(embed_dims[i], head_dims[i], heads[i], qkv_bias=qkv_bias,
                                                  proj_bias=True), mlp_ratio, drop_path=dpr[start + j])
                for j in range(layers[i])]))
        self.tap_units = [0, 2, 3, 4]
        self.feature_info = [dict(num_chs=embed_dims[0], reduction=patch_size, module="network.0")] + [
            dict(num_chs=embed_dims[i], reduction=patch_size * 2, module=f"network.{i + 1}") for i in range(1, 4)]
        self.post_network = nn.ModuleList([ClassBlock(dim, heads[-1], mlp_ratio, qkv_bias)
                                           for _ in range(num_post_layers)])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.num_features = dim
        self.use_aux_head = use_aux_head
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = nn.Linear(dim, num_classes) if use_aux_head and num_classes > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        init_trunc_normal(self, layers=(nn.Linear,))  # convs keep their own init
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    # -- TokenModel hooks ----------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x).permute(0, 2, 3, 1)  # B, H/8, W/8, C

    def run_unit(self, i: int, state: torch.Tensor) -> torch.Tensor:
        if i == 2:  # after the downsampling conv: the position embedding on the stride-16 grid
            state = state + resample_pos_embed(self.pos_embed, tuple(state.shape[1:3]))
        return super().run_unit(i, state)

    def tap(self, state: torch.Tensor, index: int, norm: bool, hw: tuple[int, int]) -> torch.Tensor:
        if norm and index > 0:
            state = self.norm(state)
        return state.permute(0, 3, 1, 2)

    def finish(self, state: torch.Tensor) -> torch.Tensor:
        if self.post_network is None:
            raise RuntimeError("this VOLO was pruned to a feature backbone; use forward_intermediates")
        x = state.reshape(state.shape[0], -1, state.shape[-1])
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.post_network:
            x = blk(x)
        return self.norm(x)

    def prune_tail(self) -> None:
        self.post_network = None
        self.cls_token = None
        self.norm = nn.Identity()
        self.head, self.aux_head = nn.Identity(), None

    # -- head ----------------------------------------------------------------------------------------------------
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class-token logits, plus 0.5 x the per-class max over the patch tokens' aux-head logits."""
        out = self.head_drop(x[:, 0])
        if pre_logits:
            return out
        out = self.head(out)
        if self.aux_head is not None:
            out = out + 0.5 * self.aux_head(self.head_drop(x[:, 1:])).amax(dim=1)
        return out

    def forward_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class-token logits, per-token aux logits (B, N, classes)) for a token-labelling loss."""
        if self.aux_head is None:
            raise ValueError("forward_dense needs the aux head (use_aux_head=True and num_classes > 0)")
        x = self.forward_features(x)
        return self.head(x[:, 0]), self.aux_head(x[:, 1:])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "token"):
            raise ValueError(f"VOLO classifies from its class token; global_pool must be 'token'; got {global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0; got {num_classes}")
        self.num_classes = num_classes
        dim = self.num_features
        dev = self.cls_token.device if self.cls_token is not None else None
        self.head = nn.Linear(dim, num_classes, device=dev) if num_classes > 0 else nn.Identity()
        self.aux_head = nn.Linear(dim, num_classes, device=dev) if self.use_aux_head and num_classes > 0 else None


_SRC = ("params, top-1: sail-sg/volo@cf35775 README.md (params to 0.01M and GMACs: timm 1.0 results table, "
        "timm evaluations of the official weights); paper FLOPs unverified")
_D1 = dict(layers=(4, 4, 8, 2), embed_dims=(192, 384, 384, 384), head_dims=(32, 32, 32, 32))
_D2 = dict(layers=(6, 4, 10, 4), embed_dims=(256, 512, 512, 512), head_dims=(32, 32, 32, 32))
_D3 = dict(layers=(8, 8, 16, 4), embed_dims=(256, 512, 512, 512), head_dims=(32, 32, 32, 32))
_D4 = dict(layers=(8, 8, 16, 4), embed_dims=(384, 768, 768, 768), head_dims=(32, 48, 48, 48))
_D5 = dict(layers=(12, 12, 20, 4), embed_dims=(384, 768, 768, 768), head_dims=(32, 48, 48, 48), mlp_ratio=4.0,
           stem_hidden_dim=128)
_CROP_NOTE = "timm's config has crop_pct 1.15 (resize above the crop size), which PretrainedCfg cannot hold: 1.0 here"

register_family(
    "volo", VOLO, paper=Paper("VOLO: Vision Outlooker for Visual Recognition", "2106.13112", "sail-sg/volo"),
    spec=ArchSpec(depths="layers", widths="embed_dims", width_quantum=lambda arch, i: arch["head_dims"][i],
                  input_step=16, at_input_size=lambda arch, hw: dict(img_size=tuple(hw))),
    timm=True, card=Card(source=_SRC, crop_pct=0.96),
    variants={
        "volo_d1_224": variant(**_D1, img_size=224, card=Card(params_m=26.63, macs_g=6.94, top1=84.2,
                                                              drop_path_rate=0.1)),
        "volo_d1_384": variant(**_D1, img_size=384, card=Card(params_m=26.78, macs_g=22.75, top1=85.2, crop_pct=1.0,
                                                              input_size=(3, 384, 384))),
        "volo_d2_224": variant(**_D2, img_size=224, card=Card(params_m=58.68, macs_g=14.34, top1=85.2,
                                                              drop_path_rate=0.2)),
        "volo_d2_384": variant(**_D2, img_size=384, card=Card(params_m=58.87, macs_g=46.17, top1=86.0, crop_pct=1.0,
                                                              input_size=(3, 384, 384))),
        "volo_d3_224": variant(**_D3, img_size=224, card=Card(params_m=86.33, macs_g=20.78, top1=85.4,
                                                              drop_path_rate=0.5)),
        "volo_d3_448": variant(**_D3, img_size=448, card=Card(params_m=86.63, macs_g=96.33, top1=86.3, crop_pct=1.0,
                                                              input_size=(3, 448, 448))),
        "volo_d4_224": variant(**_D4, img_size=224, card=Card(params_m=192.96, macs_g=44.34, top1=85.7,
                                                              drop_path_rate=0.5)),
        "volo_d4_448": variant(**_D4, img_size=448, card=Card(params_m=193.41, macs_g=197.1, top1=86.8, crop_pct=1.0,
                                                              input_size=(3, 448, 448), notes=_CROP_NOTE)),
        "volo_d5_224": variant(**_D5, img_size=224, card=Card(params_m=295.46, macs_g=72.40, top1=86.1,
                                                              drop_path_rate=0.75)),
        "volo_d5_448": variant(**_D5, img_size=448, card=Card(params_m=295.91, macs_g=315.1, top1=87.0, crop_pct=1.0,
                                                              input_size=(3, 448, 448), notes=_CROP_NOTE)),
        "volo_d5_512": variant(**_D5, img_size=512, card=Card(params_m=296.09, macs_g=425.1, top1=87.1, crop_pct=1.0,
                                                              input_size=(3, 512, 512), notes=_CROP_NOTE)),
    })
