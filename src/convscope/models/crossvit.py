"""CrossViT (Chen et al., "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification",
arXiv 2103.14899; IBM/CrossViT).

Two ViT branches see the image at two patch sizes: a small-patch branch (12x12 patches of the image at its input
size, 240 for the "224" models) and a large-patch branch (16x16 patches of the image resized by bicubic
interpolation to 224/240 of that, i.e. 224). Each has a class token and a learned position embedding. Three
multi-scale blocks follow, each running the branches' own transformer blocks (1 small-branch block, K large-branch
blocks) and then fusing them by cross-attention through the class tokens: a branch's class token, projected to the
other branch's width (LN -> GELU -> Linear), attends as the only query over [itself; the other branch's patch
tokens], and the result is projected back and put in front of its own patch tokens. After a final LayerNorm per
branch each class token gets its own linear head; the logits are their mean. The "dagger" models embed patches
with three convs (7x7/4, 3x3/3 or 3x3/2 (x2), ReLU between) instead of one patch-sized conv.

State-dict keys are timm's (`patch_embed.{b}`, `pos_embed_{b}`, `cls_token_{b}`, `blocks.{i}.blocks.{b}.{j}`,
`.projs`, `.fusion`, `.revert_projs`, `norm.{b}`, `head.{b}`); `load_checkpoint(source="official")` maps the
official ParameterLists (`pos_embed.0`, `cls_token.0`). Registered under timm's names, which carry the small
branch's resolution (crossvit_tiny_240 is the official crossvit_tiny_224, which is an alias).

Input sizes: both branches scale with the input in proportion, as at the default size: the small branch takes the
image at its size times `img_scale[0]` (1.0), the large branch at its size times `img_scale[1]` (224/240, or
384/408 for the 408 models), and each must be whole patches: H and W must be multiples of `traits.input_multiple` (120
for the 240 models, 204 for the 408 ones), ValueError otherwise. The position embeddings are resampled to the
token grids (bicubic, antialiased, timm's `resample_abs_pos_embed`). timm's own model instead resizes any input to
the branch sizes it was built for; at the default size the two agree exactly. `forward_features` returns
(B, 1, C_small + C_large): the two normalised class tokens side by side (the patch tokens of the two branches lie
on different grids); `forward_intermediates` / `features_only` give each branch's patch tokens after the last
multi-scale block as maps (stride 12 and 16 / (224/240) ~ 17: `feature_info` says `reduction=12` and `17`, as
timm's; timm also offers the earlier blocks' tokens, which are not taps here).
"""
from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import drop_path_or_identity, init_trunc_normal
from ..layers.mixers.attention import Attention
from .features import feature_take_indices
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits
from .vit_base import Block, TokenModel, resample_pos_embed


class PatchEmbed(nn.Module):
    """A patch-sized conv, or the dagger models' three convs (7x7/4 -> 3x3/3 (patch 12) or 3x3/2 (patch 16) ->
    3x3/1 or 3x3/2, ReLU between; widths C/4, C/2, C)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, multi_conv: bool) -> None:
        super().__init__()
        if not multi_conv:
            self.proj: nn.Module = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        elif patch_size == 12:
            self.proj = nn.Sequential(nn.Conv2d(in_chans, dim // 4, 7, stride=4, padding=3), nn.ReLU(),
                                      nn.Conv2d(dim // 4, dim // 2, 3, stride=3), nn.ReLU(),
                                      nn.Conv2d(dim // 2, dim, 3, stride=1, padding=1))
        elif patch_size == 16:
            self.proj = nn.Sequential(nn.Conv2d(in_chans, dim // 4, 7, stride=4, padding=3), nn.ReLU(),
                                      nn.Conv2d(dim // 4, dim // 2, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1))
        else:
            raise ValueError(f"the multi-conv patch embedding exists for patch sizes 12 and 16; got {patch_size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class CrossAttention(nn.Module):
    """The first token (a class token) attends over all tokens, itself included: (B, N, C) -> (B, 1, C)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        q = self.wq(x[:, :1]).reshape(B, 1, h, C // h).transpose(1, 2)
        k = self.wk(x).reshape(B, N, h, C // h).transpose(1, 2)
        v = self.wv(x).reshape(B, N, h, C // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, 1, C))


class CrossAttentionBlock(nn.Module):
    """cls + DropPath(CrossAttention(LN(tokens))): the updated class token only."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossAttention(dim, num_heads, qkv_bias)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.drop_path(self.attn(self.norm1(x)))


def _proj(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim_in, eps=1e-6), nn.GELU(), nn.Linear(dim_in, dim_out))


class MultiScaleBlock(nn.Module):
    """Each branch's transformer blocks, then cross-attention fusion of the class tokens (see the module
    docstring). Takes and returns a list with one (B, 1 + N_b, C_b) tensor per branch."""

    def __init__(self, dims: Sequence[int], depths: Sequence[int], num_heads: Sequence[int],
                 mlp_ratios: Sequence[float], qkv_bias: bool, drop_path: Sequence[float]) -> None:
        super().__init__()
        n = len(dims)
        self.num_branches = n
        self.blocks = nn.ModuleList(
            nn.Sequential(*[Block(dims[b], Attention(dims[b], dims[b] // num_heads[b], num_heads[b], qkv_bias=qkv_bias,
                                                     proj_bias=True),
                                  mlp_ratios[b], drop_path[j], norm_eps=1e-6) for j in range(depths[b])])
            for b in range(n))
        self.projs = nn.ModuleList(_proj(dims[b], dims[(b + 1) % n]) for b in range(n))
        self.fusion = nn.ModuleList(CrossAttentionBlock(dims[(b + 1) % n], num_heads[(b + 1) % n], qkv_bias,
                                                        drop_path[-1]) for b in range(n))
        self.revert_projs = nn.ModuleList(_proj(dims[(b + 1) % n], dims[b]) for b in range(n))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [blocks(x) for blocks, x in zip(self.blocks, xs, strict=False)]
        outs = []
        for b in range(self.num_branches):
            other = xs[(b + 1) % self.num_branches]
            cls = self.projs[b](xs[b][:, :1])
            cls = self.fusion[b](torch.cat([cls, other[:, 1:]], dim=1))
            outs.append(torch.cat([self.revert_projs[b](cls), xs[b][:, 1:]], dim=1))
        return outs


def _multiple(img_scale: Sequence[float], patch_sizes: Sequence[int]) -> int:
    """Smallest side m for which every branch's image (m times its scale) is a whole number of its patches."""
    fracs = [Fraction(s).limit_denominator(1000) for s in img_scale]
    m = 1
    while not all((m * f).denominator == 1 and (m * f) % p == 0 for f, p in zip(fracs, patch_sizes, strict=False)):
        m += 1
    return m


class CrossViT(TokenModel):
    """CrossViT (see the module docstring).

    embed_dim, num_heads, mlp_ratio, patch_size: per branch; branch_depths: transformer blocks per branch in each
    of the `num_blocks` multi-scale blocks; img_size: the small branch's built input (the position embeddings'
    grids); img_scale: each branch's image size over the input's.
    """

    units_name = "blocks"

    @classmethod
    def traits_for(cls, *, embed_dim: Sequence[int], patch_size: Sequence[int], num_blocks: int,
                   img_scale: Sequence[float]) -> ModelTraits:
        """One tap per branch (its patch tokens after the last multi-scale block, at its patch stride over its
        scale); the features are the branches' class tokens side by side."""
        m = _multiple(img_scale, patch_size)
        n = len(embed_dim)
        return ModelTraits(channels=tuple(embed_dim),
                           reductions=tuple(round(p / float(s)) for p, s in zip(patch_size, img_scale, strict=True)),
                           taps=(f"blocks.{num_blocks - 1}",) * n, num_features=sum(embed_dim), min_input_size=(m, m),
                           input_multiple=m, features_fmt="NLC", num_prefix_tokens=1)

    def __init__(self, embed_dim: Sequence[int] = (192, 384), branch_depths: Sequence[int] = (1, 4),
                 num_heads: Sequence[int] = (6, 6), mlp_ratio: Sequence[float] = (4.0, 4.0),
                 patch_size: Sequence[int] = (12, 16), num_blocks: int = 3, img_size: int = 240,
                 img_scale: Sequence[float] = (1.0, 224 / 240), multi_conv: bool = False, qkv_bias: bool = True, *,
                 in_chans: int = 3, num_classes: int = 1000, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        n = len(embed_dim)
        for arg, name in ((branch_depths, "branch_depths"), (num_heads, "num_heads"), (mlp_ratio, "mlp_ratio"),
                          (patch_size, "patch_size"), (img_scale, "img_scale")):
            if len(arg) != n:
                raise ValueError(f"{name} must have one entry per branch ({n}); got {len(arg)}")
        for b in range(n):
            if embed_dim[b] % num_heads[b]:
                raise ValueError(f"embed_dim[{b}] ({embed_dim[b]}) must be a multiple of num_heads[{b}] "
                                 f"({num_heads[b]})")
        self.traits = CrossViT.traits_for(embed_dim=embed_dim, patch_size=patch_size, num_blocks=num_blocks,
                                          img_scale=img_scale)
        self.num_branches = n
        self.embed_dim = tuple(embed_dim)
        self.patch_size = tuple(patch_size)
        self.img_scale = tuple(Fraction(s).limit_denominator(1000) for s in img_scale)
        if img_size % self.traits.input_multiple:
            raise ValueError(f"img_size must be a multiple of {self.traits.input_multiple}; got {img_size}")
        self.grids = [(int(img_size * s) // p,) * 2 for s, p in zip(self.img_scale, patch_size, strict=False)]
        self.patch_embed = nn.ModuleList(PatchEmbed(in_chans, d, p, multi_conv)
                                         for d, p in zip(embed_dim, patch_size, strict=True))
        for b in range(n):
            setattr(self, f"pos_embed_{b}", nn.Parameter(torch.zeros(1, 1 + self.grids[b][0] ** 2, embed_dim[b])))
            setattr(self, f"cls_token_{b}", nn.Parameter(torch.zeros(1, 1, embed_dim[b])))
        # timm's stochastic depth: rates rise over num_blocks x max(branch depth); each multi-scale block takes its
        # slice (block j of either branch the slice's j-th rate), the fusion the slice's last
        per = max(branch_depths)
        total = num_blocks * per
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.blocks = nn.ModuleList(
            MultiScaleBlock(embed_dim, branch_depths, num_heads, mlp_ratio, qkv_bias, rates[i * per:(i + 1) * per])
            for i in range(num_blocks))
        self.norm = nn.ModuleList(nn.LayerNorm(d, eps=1e-6) for d in embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.ModuleList(nn.Linear(d, num_classes) if num_classes > 0 else nn.Identity() for d in embed_dim)
        # the taps: each branch's patch tokens after the last multi-scale block
        self.feature_info = [dict(num_chs=embed_dim[b], reduction=round(patch_size[b] / float(img_scale[b])),
                                  module=f"blocks.{num_blocks - 1}", branch=b) for b in range(n)]
        self.tap_units = [num_blocks - 1] * n
        self.num_features = sum(embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        init_trunc_normal(self, layers=(nn.Linear,))  # convs keep their own init
        for b in range(self.num_branches):
            nn.init.trunc_normal_(getattr(self, f"pos_embed_{b}"), std=0.02)
            nn.init.trunc_normal_(getattr(self, f"cls_token_{b}"), std=0.02)

    # -- input ---------------------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        super(TokenModel, self).check_input(x)
        h, w = x.shape[-2:]
        m = self.traits.input_multiple
        if h % m or w % m:
            raise ValueError(f"{self.model_name} needs H and W multiples of {m} (each branch's image, "
                             f"{' and '.join(str(s) for s in self.img_scale)} of the input, must be whole "
                             f"{' and '.join(str(p) for p in self.patch_size)}-pixel patches); got {h}x{w}")

    def branch_sizes(self, hw: tuple[int, int]) -> list[tuple[int, int]]:
        return [(int(hw[0] * s), int(hw[1] * s)) for s in self.img_scale]

    # -- TokenModel hooks ----------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        B = x.shape[0]
        xs = []
        for b, size in enumerate(self.branch_sizes(tuple(x.shape[-2:]))):
            x_ = x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bicubic",
                                                                     align_corners=False)
            t = self.patch_embed[b](x_)
            grid = tuple(t.shape[-2:])
            pos = getattr(self, f"pos_embed_{b}")
            patch_pos = resample_pos_embed(pos[:, 1:].reshape(1, *self.grids[b], -1), grid)
            t = t.flatten(2).transpose(1, 2) + patch_pos.reshape(1, -1, pos.shape[-1])
            cls = (getattr(self, f"cls_token_{b}") + pos[:, :1]).expand(B, -1, -1)
            xs.append(torch.cat([cls, t], dim=1))
        return xs

    def run_unit(self, i: int, state: list[torch.Tensor]) -> list[torch.Tensor]:
        unit = self.blocks[i]
        if self.grad_checkpointing and torch.is_grad_enabled():
            return list(checkpoint(lambda *xs: tuple(unit(list(xs))), *state, use_reentrant=False))
        return unit(state)

    def tap(self, state: list[torch.Tensor], index: int, norm: bool, hw: tuple[int, int]) -> torch.Tensor:
        b = self.feature_info[index]["branch"]
        x = self.norm[b](state[b]) if norm else state[b]
        h, w = (s // p for s, p in zip(self.branch_sizes(hw)[b], (self.patch_size[b],) * 2, strict=False))
        return x[:, 1:].reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)

    def finish(self, state: list[torch.Tensor]) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("this CrossViT was pruned to a feature backbone; use forward_intermediates")
        return torch.cat([norm(x[:, :1]) for norm, x in zip(self.norm, state, strict=False)], dim=-1)

    def prune_tail(self) -> None:
        self.norm = nn.ModuleList(nn.Identity() for _ in range(self.num_branches))
        self.head = None

    # -- intermediates: the taps are per branch, at the same unit ------------------------------------------------
    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Each branch's patch tokens after the last multi-scale block (feature_info order: small branch, large
        branch) as maps, or as tokens with `output_fmt="NLC"`; and the final features unless
        `intermediates_only`. `norm=True` applies the branch's final LayerNorm."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC'; got {output_fmt!r}")
        self.check_input(x)
        take, _ = feature_take_indices(len(self.feature_info), indices)
        state = self.embed(x)
        for i in range(len(self.blocks)):
            state = self.run_unit(i, state)
        out = []
        for k in take:
            t = self.tap(state, k, norm, tuple(x.shape[-2:]))
            out.append(t.flatten(2).transpose(1, 2) if output_fmt == "NLC" else t)
        if intermediates_only:
            return out
        return self.finish(state), out

    def prune_intermediate_layers(self, indices: int | Sequence[int] | None = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """A features-only backbone: every tap follows the last block, so only the head and norms go."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        self.prune_tail()
        self.num_classes = 0
        return take

    # -- head ----------------------------------------------------------------------------------------------------
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean of the branches' logits from their class tokens; `pre_logits`: the class tokens concatenated."""
        x = self.head_drop(x[:, 0])
        if pre_logits or isinstance(self.head[0], nn.Identity):
            return x
        parts = x.split(list(self.embed_dim), dim=-1)
        return torch.stack([head(p) for head, p in zip(self.head, parts, strict=False)]).mean(0)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "token"):
            raise ValueError(f"CrossViT classifies from its class tokens; global_pool must be 'token'; "
                             f"got {global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0; got {num_classes}")
        self.num_classes = num_classes
        dev = self.cls_token_0.device
        self.head = nn.ModuleList(nn.Linear(d, num_classes, device=dev) if num_classes > 0 else nn.Identity()
                                  for d in self.embed_dim)


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """IBM/CrossViT keys -> ours (timm's): the ParameterLists `pos_embed.{b}` and `cls_token.{b}` become
    `pos_embed_{b}` and `cls_token_{b}`; fusion blocks of the official depth-0 layout are the same modules."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith(("pos_embed.", "cls_token.")):
            k = k.replace(".", "_")
        out[k] = v
    return out


def _at_input_size(arch: dict, hw: tuple[int, int]) -> dict:
    """The built size follows the input; the variant's branch ratio is kept where the input fits it, otherwise the
    large branch takes the whole number of its patches nearest the ratio (336 -> 320, img_scale 20/21), so that
    any multiple of 12 works (scale()'s step)."""
    scale = tuple(arch.get("img_scale", (1.0, 224 / 240)))
    patches = tuple(arch.get("patch_size", (12, 16)))
    m = _multiple(scale, patches)
    if hw[0] % m == 0 and hw[1] % m == 0:
        return dict(img_size=hw[0])
    side = patches[1] * max(1, round(hw[0] * scale[1] / patches[1]))
    return dict(img_scale=(scale[0], side / hw[0]), img_size=hw[0])


_SRC = ("params, MACs (fvcore): timm benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv @aa4b585; top-1: timm "
        "results-imagenet.csv @aa4b585 (timm evaluations of the official IBM/CrossViT@3f7ab77 weights; the repo has "
        "no table, the paper's values agree to ~0.1)")
_T = dict(branch_depths=(1, 4), mlp_ratio=(4.0, 4.0))
_N = dict(mlp_ratio=(3.0, 3.0))

register_family(
    "crossvit", CrossViT,
    paper=Paper("CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification", "2103.14899",
                "IBM/CrossViT"),
    spec=ArchSpec(depths="branch_depths", widths="embed_dim", width_quantum=lambda arch, i: arch["num_heads"][i],
                  input_step=12, at_input_size=_at_input_size),
    converter=convert_official, timm=True, card=Card(source=_SRC, input_size=(3, 240, 240), crop_pct=0.875),
    variants={
        "crossvit_tiny_240": variant(embed_dim=(96, 192), num_heads=(3, 3), **_T, aliases=("crossvit_tiny_224",),
                                     card=Card(params_m=7.01, macs_g=1.57, top1=73.352)),
        "crossvit_small_240": variant(embed_dim=(192, 384), num_heads=(6, 6), **_T, aliases=("crossvit_small_224",),
                                      card=Card(params_m=26.86, macs_g=5.63, top1=81.036)),
        "crossvit_base_240": variant(embed_dim=(384, 768), num_heads=(12, 12), **_T, aliases=("crossvit_base_224",),
                                     card=Card(params_m=105.03, macs_g=21.22, top1=82.212)),
        "crossvit_9_240": variant(embed_dim=(128, 256), num_heads=(4, 4), branch_depths=(1, 3), **_N,
                                  aliases=("crossvit_9_224",), card=Card(params_m=8.55, macs_g=1.85, top1=73.994)),
        "crossvit_15_240": variant(embed_dim=(192, 384), num_heads=(6, 6), branch_depths=(1, 5), **_N,
                                   aliases=("crossvit_15_224",), card=Card(params_m=27.53, macs_g=5.81, top1=81.522)),
        "crossvit_18_240": variant(embed_dim=(224, 448), num_heads=(7, 7), branch_depths=(1, 6), **_N,
                                   aliases=("crossvit_18_224",), card=Card(params_m=43.27, macs_g=9.05, top1=82.39)),
        "crossvit_9_dagger_240": variant(
            embed_dim=(128, 256), num_heads=(4, 4), branch_depths=(1, 3), multi_conv=True, **_N,
            aliases=("crossvit_9_dagger_224",), card=Card(params_m=8.78, macs_g=1.99, top1=76.99)),
        "crossvit_15_dagger_240": variant(
            embed_dim=(192, 384), num_heads=(6, 6), branch_depths=(1, 5), multi_conv=True, **_N,
            aliases=("crossvit_15_dagger_224",), card=Card(params_m=28.21, macs_g=6.13, top1=82.302)),
        "crossvit_18_dagger_240": variant(
            embed_dim=(224, 448), num_heads=(7, 7), branch_depths=(1, 6), multi_conv=True, **_N,
            aliases=("crossvit_18_dagger_224",), card=Card(params_m=44.27, macs_g=9.5, top1=82.494)),
        "crossvit_15_dagger_408": variant(
            embed_dim=(192, 384), num_heads=(6, 6), branch_depths=(1, 5), multi_conv=True, **_N, img_size=408,
            img_scale=(1.0, 384 / 408), aliases=("crossvit_15_dagger_384",),
            card=Card(params_m=28.50, macs_g=21.45, top1=83.842, input_size=(3, 408, 408), crop_pct=1.0)),
        "crossvit_18_dagger_408": variant(
            embed_dim=(224, 448), num_heads=(7, 7), branch_depths=(1, 6), multi_conv=True, **_N, img_size=408,
            img_scale=(1.0, 384 / 408), aliases=("crossvit_18_dagger_384",),
            card=Card(params_m=44.61, macs_g=32.47, top1=84.198, input_size=(3, 408, 408), crop_pct=1.0)),
    })
