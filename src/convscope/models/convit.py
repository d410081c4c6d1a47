"""ConViT (d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases",
arXiv 2103.10697; facebookresearch/convit).

A DeiT (16x16 patches, learned absolute position embedding, 12 blocks, MLP ratio 4, no qkv bias, LayerNorm eps
1e-6) whose first 10 blocks use gated positional self-attention (`layers.mixers.GPSA`, local init with locality
strength 1) on the patch tokens alone; the class token is joined just before block 11, so the last two (plain
multi-head, scaled_dot_product_attention) blocks attend with it. Width = heads x 48.

State-dict keys are timm's (`blocks.{0..11}`, GPSA's `qk`, `v`, `pos_proj`, `gating_param`), so timm checkpoints
load directly. The 12 blocks are declared as four groups of three (`depths=(3, 3, 3, 3)`, equal widths) so that
scaling and feature extraction see stage-like taps: after blocks 3, 6, 9 and 12, patch tokens at stride 16.
Other input sizes: multiples of 16, any aspect (the relative offsets follow the grid; the position embedding is
resampled bicubically with antialiasing). A scaled configuration shallower than `local_up_to_layer` keeps its last
block a class-token (MHSA) block.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers import init_trunc_normal
from ..layers.mixers.attention import Attention
from ..layers.mixers.gpsa import GPSA
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits
from .vit_base import Block, TokenModel, resample_pos_embed


class ConViT(TokenModel):
    """ConViT: 16x16 patch embedding + position embedding -> GPSA blocks on the patch map -> (+ class token)
    -> MHSA blocks -> LN -> Linear on the class token."""

    @classmethod
    def traits_for(cls, *, depths: Sequence[int], dims: Sequence[int], patch_size: int) -> ModelTraits:
        """Taps at the end of each block group, all at the patch stride; features are the tokens, class first."""
        ends = [sum(depths[:i + 1]) - 1 for i in range(len(depths))]
        return ModelTraits(channels=tuple(dims), reductions=(patch_size,) * len(dims),
                           taps=tuple(f"blocks.{e}" for e in ends), num_features=dims[0], input_multiple=patch_size,
                           features_fmt="NLC", num_prefix_tokens=1)

    def __init__(self, depths: tuple[int, ...] = (3, 3, 3, 3), dims: tuple[int, ...] = (192, 192, 192, 192),
                 head_dim: int = 48, *, img_size: int | tuple[int, int] = 224, in_chans: int = 3,
                 num_classes: int = 1000, patch_size: int = 16, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 local_up_to_layer: int = 10, locality_strength: float = 1.0, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = ConViT.traits_for(depths=depths, dims=dims, patch_size=patch_size)
        if len(depths) != len(dims) or len(set(dims)) != 1:
            raise ValueError(f"ConViT's block groups share one width: depths and dims need one entry per group and "
                             f"equal dims; got {depths} and {dims}")
        dim = dims[0]
        if dim % head_dim:
            raise ValueError(f"the width ({dim}) must be a multiple of head_dim ({head_dim})")
        heads = dim // head_dim
        depth = sum(depths)
        self.num_local = min(local_up_to_layer, depth - 1)
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.grid = (img[0] // patch_size, img[1] // patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(dim, GPSA(dim, heads, qkv_bias, locality_strength) if i < self.num_local else
                  Attention(dim, head_dim, heads, qkv_bias=qkv_bias, proj_bias=True), mlp_ratio, dpr[i], norm_eps=1e-6)
            for i in range(depth)])
        ends = [sum(depths[:i + 1]) - 1 for i in range(len(depths))]
        self.tap_units = ends
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f"blocks.{e}") for e in ends]
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.num_features = dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        init_trunc_normal(self, layers=(nn.Linear,))  # convs keep their own init
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, GPSA):
                m.local_init()

    # -- TokenModel hooks ----------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # B, H/16, W/16, C: GPSA works on the patch map
        pos = self.pos_embed.reshape(1, *self.grid, -1)
        return x + resample_pos_embed(pos, tuple(x.shape[1:3]))

    def _join_cls(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)

    def run_unit(self, i: int, state: torch.Tensor) -> torch.Tensor:
        if i == self.num_local:
            state = self._join_cls(state)
        return super().run_unit(i, state)

    def tap(self, state: torch.Tensor, index: int, norm: bool, hw: tuple[int, int]) -> torch.Tensor:
        if norm:
            state = self.norm(state)
        if state.ndim == 3:  # after the class token joined: patch tokens back to the map
            h, w = hw[0] // self.traits.input_multiple, hw[1] // self.traits.input_multiple
            state = state[:, 1:].reshape(state.shape[0], h, w, -1)
        return state.permute(0, 3, 1, 2)

    def finish(self, state: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("this ConViT was pruned to a feature backbone; use forward_intermediates")
        return self.norm(state)

    def prune_tail(self) -> None:
        self.norm = nn.Identity()
        self.head = None
        if self.tap_units[-1] < self.num_local:
            self.cls_token = None

    # -- head ----------------------------------------------------------------------------------------------------
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "token"):
            raise ValueError("ConViT classifies from its class token; global_pool must be 'token'; "
                             f"got {global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0; got {num_classes}")
        self.num_classes = num_classes
        dev = self.pos_embed.device
        self.head = nn.Linear(self.num_features, num_classes, device=dev) if num_classes > 0 else nn.Identity()


_SRC = ("top-1 Ti: facebookresearch/convit@0a9340a README.md (73.116); params, GMACs and S/B top-1: timm 1.0 "
        "results table (timm evaluations of the official weights); paper table unverified")

register_family(
    "convit", ConViT, paper=Paper("ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases",
                                  "2103.10697", "facebookresearch/convit"),
    spec=ArchSpec(depths="depths", widths="dims", width_quantum=lambda arch, i: arch.get("head_dim", 48),
                  input_step=16, at_input_size=lambda arch, hw: dict(img_size=tuple(hw))),
    timm=True, card=Card(source=_SRC, crop_pct=0.875),
    arch=dict(depths=(3, 3, 3, 3), head_dim=48, local_up_to_layer=10, locality_strength=1.0),
    variants={
        "convit_tiny": variant(dims=(192,) * 4, card=Card(params_m=5.71, macs_g=1.26, top1=73.1, drop_path_rate=0.1)),
        "convit_small": variant(dims=(432,) * 4, card=Card(params_m=27.78, macs_g=5.76, top1=81.4,
                                                           drop_path_rate=0.1)),
        "convit_base": variant(dims=(768,) * 4, card=Card(params_m=86.54, macs_g=17.52, top1=82.3, drop_path_rate=0.1)),
    })
