"""CvT (Wu et al., "CvT: Introducing Convolutions to Vision Transformers", arXiv 2103.15808).

Three stages, each opened by a convolutional token embedding (an overlapping strided conv, 7x7/4 then 3x3/2,
and a LayerNorm on the tokens), followed by pre-norm Transformer blocks whose attention takes q, k and v through
depthwise conv + BatchNorm projections (stride 2 for k and v; `ConvProjectionAttention`). No position
embedding. The class token joins in the last stage only, and the head (LayerNorm -> Linear) reads it.

The MLP activation is QuickGELU (x * sigmoid(1.702 x)), as the official `get_cls_model` builds it; Hugging Face
transformers' port (CvtForImageClassification) uses exact GELU instead (`mlp_act="gelu"` builds that).

State-dict keys follow the official microsoft/CvT layout inside each stage (`stages.{i}` for its `stage{i}`, the
final norm and linear as `head.norm` / `head.fc`). `load_checkpoint(..., source="official")` maps the official
keys; `source="transformers"` maps those of transformers' CvtForImageClassification.

forward_features returns the last stage's tokens (B, 1 + H*W, C), class token first (`traits.features_fmt == "NLC"`);
forward_intermediates and features_only give each stage's map as (B, C, H, W), the class token removed.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import Mlp, drop_path_or_identity, init_trunc_normal
from ..layers.mixers.conv_attention import ConvProjectionAttention
from .base import ConvScopeModel
from .features import feature_take_indices
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation of the official CvT (and CLIP) code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


_ACTS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


class ConvEmbed(nn.Module):
    """Convolutional token embedding: k x k conv with stride s (overlapping), then LayerNorm over channels."""

    def __init__(self, in_chs: int, dim: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, H*W, C) normalised tokens and the map's (H, W)."""
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class CvtBlock(nn.Module):
    """x + DropPath(attn(LN(x))), then x + DropPath(MLP(LN(x))), on (B, P + H*W, C) tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 kernel_size: int = 3, stride_kv: int = 2, num_prefix_tokens: int = 0, mlp_act: str = "quick_gelu",
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        if mlp_act not in _ACTS:
            raise ValueError(f"mlp_act must be one of {sorted(_ACTS)}; got {mlp_act!r}")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ConvProjectionAttention(dim, num_heads, qkv_bias=qkv_bias, kernel_size=kernel_size,
                                            stride_kv=stride_kv, num_prefix_tokens=num_prefix_tokens,
                                            attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=_ACTS[mlp_act], drop=drop)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CvtStage(nn.Module):
    """Conv token embedding, [class token], blocks. `forward` maps (B, C_in, H, W) to the stage's (B, C, h, w)
    map (class token dropped); `forward_tokens` gives the tokens with the class token first, and (h, w)."""

    def __init__(self, embed: ConvEmbed, blocks: Sequence[CvtBlock], dim: int, cls_token: bool) -> None:
        super().__init__()
        self.patch_embed = embed
        self.num_prefix_tokens = int(cls_token)
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, hw = self.patch_embed(x)
        if self.num_prefix_tokens:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        return x, hw

    def tokens_to_map(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens:]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens_to_map(*self.forward_tokens(x))


class CvtHead(nn.Module):
    """LayerNorm -> dropout -> Linear on the class token of (B, 1 + N, C) tokens."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.norm = nn.LayerNorm(in_features)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.norm(x[:, 0]))
        return x if pre_logits else self.fc(x)


class CvT(ConvScopeModel):
    """CvT: three stages of conv token embedding + conv-projection Transformer blocks; class token in the last
    stage; LayerNorm -> Linear on it.

    drop_path_rate: as the official configs, stochastic depth in the last stage only, rising linearly from 0 to
    `drop_path_rate` over its blocks.
    """

    @classmethod
    def traits_for(cls, *, depths: Sequence[int], embed_dims: Sequence[int],
                   patch_strides: Sequence[int]) -> ModelTraits:
        """Stage maps at the cumulative patch strides; the features are the last stage's tokens, class first."""
        n = len(depths)
        reductions = tuple(math.prod(patch_strides[:i + 1]) for i in range(n))
        return ModelTraits(
            channels=tuple(embed_dims), reductions=reductions, taps=tuple(f"stages.{i}" for i in range(n)),
            num_features=embed_dims[-1], min_input_size=(16, 16), features_fmt="NLC", num_prefix_tokens=1,
            reparameterizable=True,
            grad_free=(f"stages.{n - 1}.blocks.{depths[-1] - 1}.attn.conv_proj_q.",),
            grad_free_reason="the last block's query projection only makes queries of spatial tokens, whose outputs "
                             "the class-token head discards (as in the official model; the maps of "
                             "forward_intermediates do depend on it)")

    def __init__(self, depths: tuple[int, ...] = (1, 2, 10), embed_dims: tuple[int, ...] = (64, 192, 384),
                 num_heads: tuple[int, ...] = (1, 3, 6), *, in_chans: int = 3, num_classes: int = 1000,
                 patch_sizes: tuple[int, ...] = (7, 3, 3), patch_strides: tuple[int, ...] = (4, 2, 2),
                 patch_paddings: tuple[int, ...] = (2, 1, 1), mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 kernel_qkv: int = 3, stride_kv: int = 2, mlp_act: str = "quick_gelu", drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = CvT.traits_for(depths=depths, embed_dims=embed_dims, patch_strides=patch_strides)
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(patch_sizes) == len(patch_strides) == len(patch_paddings)
                == n):
            raise ValueError("depths, embed_dims, num_heads, patch_sizes, patch_strides and patch_paddings need one "
                             "entry per stage")
        self.stem = nn.Identity()  # each stage opens with its own conv token embedding
        stages, prev, reduction = [], in_chans, 1
        for i in range(n):
            last = i == n - 1
            dpr = [drop_path_rate * j / max(depths[i] - 1, 1) if last else 0.0 for j in range(depths[i])]
            blocks = [CvtBlock(embed_dims[i], num_heads[i], mlp_ratio, qkv_bias, kernel_qkv, stride_kv,
                               num_prefix_tokens=int(last), mlp_act=mlp_act, drop=drop_rate,
                               attn_drop=attn_drop_rate, drop_path=dpr[j]) for j in range(depths[i])]
            embed = ConvEmbed(prev, embed_dims[i], patch_sizes[i], patch_strides[i], patch_paddings[i])
            stages.append(CvtStage(embed, blocks, embed_dims[i], cls_token=last))
            prev, reduction = embed_dims[i], reduction * patch_strides[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = embed_dims[-1]
        self.head = CvtHead(embed_dims[-1], num_classes, drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        init_trunc_normal(self, layers=(nn.Linear,))  # convs keep their own init
        for s in self.stages:
            if s.num_prefix_tokens:
                nn.init.trunc_normal_(s.cls_token, std=0.02)

    def group_matcher(self, coarse: bool = False) -> dict:
        """The base's grouping, with the first stage's conv token embedding as the stem (the model has no other)."""
        groups = super().group_matcher(coarse)
        return dict(groups, stem=r"^stages\.0\.patch_embed\.|" + groups["stem"])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's tokens (B, 1 + H*W, C), class token first (not normalised: the head's norm does)."""
        self.check_input(x)
        for stage in self.stages[:-1]:
            x = stage(x)
        return self.stages[-1].forward_tokens(x)[0]

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage maps (B, C, H, W) selected by `indices` (class token removed), and the final tokens (as
        forward_features) unless `intermediates_only`. `norm` is accepted for timm's signature: CvT's final norm
        belongs to the head and acts on the class token only, so the maps are never normalised."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW'; got {output_fmt!r}")
        self.check_input(x)
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if (stop_early or intermediates_only) else self.stages
        intermediates = []
        tokens = None
        for i, stage in enumerate(stages):
            tokens, hw = stage.forward_tokens(x)
            x = stage.tokens_to_map(tokens, hw)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return tokens, intermediates


# -- converters ----------------------------------------------------------------------------------------------------
def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """microsoft/CvT keys -> ours: `stage{i}.` -> `stages.{i}.`, the final `norm` / `head` -> `head.norm` /
    `head.fc`; everything inside a stage keeps its official name."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^stage(\d+)\.", r"stages.\1.", k)
        k = re.sub(r"^norm\.", "head.norm.", k)
        k = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", k)
        out[k] = v
    return out


_TRANSFORMERS_RULES = [  # (pattern, replacement), applied in order to CvtForImageClassification's keys
    (r"^cvt\.encoder\.stages\.(\d+)\.", r"stages.\1."),
    (r"\.embedding\.convolution_embeddings\.projection\.", ".patch_embed.proj."),
    (r"\.embedding\.convolution_embeddings\.normalization\.", ".patch_embed.norm."),
    (r"\.layers\.(\d+)\.", r".blocks.\1."),
    (r"\.attention\.attention\.convolution_projection_(query|key|value)\.convolution_projection\.convolution\.",
     r".attn.conv_proj_\1.conv."),
    (r"\.attention\.attention\.convolution_projection_(query|key|value)\.convolution_projection\.normalization\.",
     r".attn.conv_proj_\1.bn."),
    (r"\.attention\.attention\.projection_(query|key|value)\.", r".attn.proj_\1."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"_(query)\.", r"_q."), (r"_(key)\.", r"_k."), (r"_(value)\.", r"_v."),
    (r"^layernorm\.", "head.norm."),
    (r"^classifier\.", "head.fc."),
]


def convert_transformers(state_dict: dict, model: nn.Module) -> dict:
    """Hugging Face transformers' CvtForImageClassification keys -> ours (`cvt.encoder.stages.{i}.layers.{j}.
    attention.attention.projection_query` -> `stages.{i}.blocks.{j}.attn.proj_q`, ...)."""
    out = {}
    for k, v in state_dict.items():
        for pattern, repl in _TRANSFORMERS_RULES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


# -- variants ----------------------------------------------------------------------------------------------------
_SRC = ("top-1 and MACs: microsoft/CvT README @f851e68 (GFLOPs column: MACs); params: exact count of the official "
        "model (experiments/imagenet/cvt/*.yaml @f851e68), which the README rounds (20M, 32M, 277M)")
# The README's 224 figures (4.5, 7.1 G) and W24's 193.2 G are not what the official code counts: ptflops 0.7.5
# (the repo's counter) with the repo's own Attention.compute_macs hook gives 4.580, 7.199 and 194.55 G on
# cls_cvt.py @f851e68 (16.33 and 24.94 G for the 384 variants, which do match). Those cards carry the README's
# figure, say so in `notes`, and are listed in convscope.analysis.fidelity.MACS_EXCEPTIONS; our counts: 4.566 / 7.178
# / 194.22 G pure MACs, 4.585 / 7.206 / 194.49 G fvcore.
_MACS_NOTE = ("README MACs {g} G not reproduced: the official code's own count (ptflops 0.7.5 with its "
              "Attention.compute_macs hook) gives {off} G, ours {ours} G (fvcore convention)")
_CVT13 = dict(depths=(1, 2, 10), embed_dims=(64, 192, 384), num_heads=(1, 3, 6))
_CVT21 = dict(depths=(1, 4, 16), embed_dims=(64, 192, 384), num_heads=(1, 3, 6))
_CVTW24 = dict(depths=(2, 2, 20), embed_dims=(192, 768, 1024), num_heads=(3, 12, 16))
# The 384 configs evaluate without a centre crop (TEST.CENTER_CROP: False): resize to 384x384, crop_pct 1.0;
# the 224 configs resize to 256 and crop 224 (crop_pct 0.875); both bicubic (INTERPOLATION: 3).


def _heads_quantum(arch, i):
    return arch["num_heads"][i]


register_family(
    "cvt", CvT, paper=Paper("CvT: Introducing Convolutions to Vision Transformers", "2103.15808", "microsoft/CvT"),
    spec=ArchSpec(depths="depths", widths="embed_dims", width_quantum=_heads_quantum),
    converters={"official": convert_official, "transformers": convert_transformers},
    card=Card(source=_SRC, macs_convention="fvcore"),
    variants={
        "cvt_13_224": variant(**_CVT13, card=Card(
            params_m=20.00, macs_g=4.5, top1=81.6, drop_path_rate=0.1,
            notes=_MACS_NOTE.format(g=4.5, off=4.580, ours=4.585))),
        "cvt_13_384": variant(**_CVT13, card=Card(
            params_m=20.00, macs_g=16.3, top1=83.0, drop_path_rate=0.1, input_size=(3, 384, 384), crop_pct=1.0)),
        "cvt_21_224": variant(**_CVT21, card=Card(
            params_m=31.62, macs_g=7.1, top1=82.5, drop_path_rate=0.1,
            notes=_MACS_NOTE.format(g=7.1, off=7.199, ours=7.206))),
        "cvt_21_384": variant(**_CVT21, card=Card(
            params_m=31.62, macs_g=24.9, top1=83.3, drop_path_rate=0.1, input_size=(3, 384, 384), crop_pct=1.0)),
        "cvt_w24_384": variant(**_CVTW24, card=Card(
            params_m=277.20, macs_g=193.2, top1=87.6, pretrain="ImageNet-22k", drop_path_rate=0.3,
            input_size=(3, 384, 384), crop_pct=1.0,
            notes="released only as ImageNet-22k pre-trained, fine-tuned on 1k at 384; "
                  + _MACS_NOTE.format(g=193.2, off=194.55, ours=194.49))),
    })
