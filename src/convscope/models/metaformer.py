"""MetaFormer: PoolFormer (Yu et al., "MetaFormer Is Actually What You Need for Vision", arXiv 2111.11418) and the
MetaFormer baselines (Yu et al., "MetaFormer Baselines for Vision", arXiv 2210.13452): PoolFormerV2,
IdentityFormer, RandFormer, ConvFormer and CAFormer.

One skeleton, `norm -> token mixer -> residual; norm -> MLP -> residual`, with the token mixer as the only
thing that changes between the baselines. Any mixer from `convscope.layers.mixers` plugs in by name:

    create_model("poolformerv2_s12", token_mixers="inception_dw")
    MetaFormer(depths=(2, 2, 6, 2), dims=(64, 128, 320, 512), token_mixers=("sepconv",) * 2 + ("attention",) * 2)

Stages whose mixer works on token sequences (attention) run on (B, N, C) with Linear MLPs; the others on NCHW
maps with 1x1-conv MLPs. State-dict keys are timm's; `load_checkpoint(..., source="official")` maps the
sail-sg/poolformer and sail-sg/metaformer keys.
"""
from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from ..layers import (
    Attention,
    ClassifierHead,
    GroupNorm1,
    LayerNorm,
    LayerNorm2d,
    LayerScale,
    Mlp,
    MlpHead,
    RandomMixing,
    SquaredReLU,
    StarReLU,
    drop_path_or_identity,
    get_mixer,
    init_trunc_normal,
)
from .base import ConvScopeModel, NormFactory, Stage
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy

_NO_BIAS_GN = partial(GroupNorm1, eps=1e-6, bias=False)
#: Mixers that `reparameterize` changes: parallel branches merged (dilated_reparam) or BatchNorms folded.
FOLDING_MIXERS = ("dilated_reparam", "lsconv", "wavemix")
_NO_BIAS_LN2D = partial(LayerNorm2d, bias=False)
_NO_BIAS_LN = partial(LayerNorm, bias=False)


def _scale_or_identity(dim: int, init_value: float | None, channels_first: bool) -> nn.Module:
    return nn.Identity() if init_value is None else LayerScale(dim, init_value, channels_first)


class MetaFormerBlock(nn.Module):
    """x = res_scale1(x) + layer_scale1(DropPath(token_mixer(norm1(x))));
    x = res_scale2(x) + layer_scale2(DropPath(mlp(norm2(x)))).

    Layer scale and residual scale are per-channel learnable vectors, or absent (None)."""

    def __init__(self, dim: int, token_mixer: type[nn.Module], norm_layer: NormFactory, mixer_kwargs: dict,
                 mlp_act: Callable[[], nn.Module] = StarReLU, mlp_bias: bool = False, mlp_ratio: float = 4,
                 drop_path: float = 0.0, proj_drop: float = 0.0, layer_scale_init: float | None = None,
                 res_scale_init: float | None = None) -> None:
        super().__init__()
        channels_first = not getattr(token_mixer, "channels_last", False)
        self.norm1 = norm_layer(dim)
        if "proj_drop" in inspect.signature(token_mixer).parameters:  # mixers with an output projection
            mixer_kwargs = dict(mixer_kwargs, proj_drop=proj_drop)
        self.token_mixer = token_mixer(dim, **mixer_kwargs)
        self.drop_path1 = drop_path_or_identity(drop_path)
        self.layer_scale1 = _scale_or_identity(dim, layer_scale_init, channels_first)
        self.res_scale1 = _scale_or_identity(dim, res_scale_init, channels_first)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=mlp_act, bias=mlp_bias, drop=proj_drop,
                       use_conv=channels_first)
        self.drop_path2 = drop_path_or_identity(drop_path)
        self.layer_scale2 = _scale_or_identity(dim, layer_scale_init, channels_first)
        self.res_scale2 = _scale_or_identity(dim, res_scale_init, channels_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))


class Downsampling(nn.Module):
    """norm -> strided conv (the stem has the norm after the conv instead)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int,
                 norm_layer: NormFactory | None, norm_first: bool) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding)
        self.norm = norm_layer(in_chs if norm_first else out_chs) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x)) if self.norm_first else self.norm(self.conv(x))


class MetaFormerStage(Stage):
    """A Stage whose blocks may run on (B, N, C) token sequences instead of NCHW maps."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module], tokens: bool) -> None:
        super().__init__(downsample, blocks)
        self.tokens = tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tokens:
            return super().forward(x)
        x = self.downsample(x)
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = super().forward_blocks(x)
        return x.transpose(1, 2).reshape(B, C, H, W)


def _per_stage(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


class MetaFormer(ConvScopeModel):
    """The MetaFormer skeleton: stem (7x7/4 conv) -> four stages, stages 2-4 opened by norm + 3x3/2 conv ->
    global average pool -> norm -> Linear or MLP head.

    token_mixers: per stage (or one for all): a mixer class or a name from `convscope.layers.MIXERS`.
    mixer_kwargs: per stage (or one for all): extra arguments for the mixer (e.g. `num_tokens` for RandomMixing).
    norm_layers: per stage (default: the baselines' no-bias GroupNorm1 on maps, no-bias LayerNorm on tokens);
    downsample_norm: in the stem and downsampling layers (None: no norm).
    pre_pool_norm: apply the final norm to the map before pooling (PoolFormer v1's official head) instead of to
        the pooled vector.
    """

    @classmethod
    def traits_for(cls, *, dims: Sequence[int], token_mixers: Any, mixer_kwargs: Any) -> ModelTraits:
        """RandomMixing's fixed token count fixes the input size (its side over the stage's stride is the square
        root of the count); mixers with BatchNorms or parallel branches make the network re-parameterisable."""
        n = len(dims)
        mixers = [get_mixer(m) for m in _per_stage(token_mixers, n)]
        fixed = None
        for i, (mixer, kw) in enumerate(zip(mixers, _per_stage(mixer_kwargs or {}, n), strict=True)):
            if issubclass(mixer, RandomMixing):
                side = math.isqrt(kw.get("num_tokens", 196)) * 4 * 2 ** i
                fixed = (side, side)
                break
        folding = {get_mixer(name) for name in FOLDING_MIXERS}
        return hierarchy(dims, fixed_input_size=fixed,
                         reparameterizable=any(m in folding for m in mixers))

    def __init__(self, depths: Sequence[int] = (2, 2, 6, 2), dims: Sequence[int] = (64, 128, 320, 512), *,
                 in_chans: int = 3, num_classes: int = 1000, token_mixers="pooling", mixer_kwargs=None,
                 norm_layers=None,
                 downsample_norm: NormFactory | None = _NO_BIAS_LN2D,
                 mlp_act: Callable[[], nn.Module] = StarReLU, mlp_bias: bool = False,
                 layer_scale_init_values=None, res_scale_init_values=(None, None, 1.0, 1.0),
                 output_norm: NormFactory = LayerNorm, pre_pool_norm: bool = False,
                 use_mlp_head: bool = False, drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = MetaFormer.traits_for(dims=dims, token_mixers=token_mixers, mixer_kwargs=mixer_kwargs)
        n = len(depths)
        mixers = [get_mixer(m) for m in _per_stage(token_mixers, n)]
        mixer_kwargs = _per_stage(mixer_kwargs or {}, n)
        tokens = [getattr(m, "channels_last", False) for m in mixers]
        norm_layers = [norm or (_NO_BIAS_LN if tok else _NO_BIAS_GN) for norm, tok in
                       zip(_per_stage(norm_layers, n), tokens, strict=False)]
        ls_inits = _per_stage(layer_scale_init_values, n)
        rs_inits = _per_stage(res_scale_init_values, n)

        self.stem = Downsampling(in_chans, dims[0], 7, 4, 2, downsample_norm, norm_first=False)
        self.build_stages(
            depths, dims, drop_path_rate,
            downsample=lambda i: Downsampling(dims[i - 1], dims[i], 3, 2, 1, downsample_norm, norm_first=True),
            block=lambda i, j, dp: MetaFormerBlock(dims[i], mixers[i], norm_layers[i], mixer_kwargs[i], mlp_act,
                                                   mlp_bias, drop_path=dp, proj_drop=proj_drop_rate,
                                                   layer_scale_init=ls_inits[i], res_scale_init=rs_inits[i]),
            stage=lambda i, down, blocks: MetaFormerStage(down, blocks, tokens=tokens[i]))
        # The official MLP head normalises with nn.LayerNorm's default eps (1e-5); timm uses 1e-6.
        fc = partial(MlpHead, mlp_ratio=4, act_layer=SquaredReLU, norm_layer=nn.LayerNorm, drop=drop_rate) \
            if use_mlp_head else None
        self.head = ClassifierHead(dims[-1], num_classes, norm_layer=output_norm, norm_first=pre_pool_norm,
                                   drop_rate=0.0 if use_mlp_head else drop_rate, fc_factory=fc)
        init_trunc_normal(self)


# -- official checkpoints ----------------------------------------------------------------------------------------
def _reshape_like(out: dict, own: dict) -> dict:
    for k, v in out.items():
        if k in own and v.shape != own[k].shape and v.numel() == own[k].numel():
            out[k] = v.reshape(own[k].shape)  # Linear <-> 1x1 conv, per-channel scales
    return out


def convert_poolformer_v1(state_dict: dict, model: nn.Module) -> dict:
    """sail-sg/poolformer: patch_embed / network.{0..6} (blocks at even indices, downsampling at odd) / norm / head."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace("patch_embed.proj.", "stem.conv.")
        m = re.match(r"network\.(\d+)\.(.*)", k)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2:  # a PatchEmbed between stages
                k = f"stages.{(idx + 1) // 2}.downsample." + rest.replace("proj.", "conv.")
            else:
                k = f"stages.{idx // 2}.blocks.{rest}"
                k = re.sub(r"layer_scale_(\d)$", r"layer_scale\1.scale", k)
        k = re.sub(r"^norm\.", "head.norm.", k)
        k = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", k)
        out[k] = v
    return _reshape_like(out, model.state_dict())


def convert_metaformer(state_dict: dict, model: nn.Module) -> dict:
    """sail-sg/metaformer: downsample_layers.{i}.{pre_norm,conv,post_norm} / stages.{i}.{j} / norm / head."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^downsample_layers\.0\.post_norm\.", "stem.norm.", k)
        k = re.sub(r"^downsample_layers\.0\.conv\.", "stem.conv.", k)
        k = re.sub(r"^downsample_layers\.(\d+)\.pre_norm\.", r"stages.\1.downsample.norm.", k)
        k = re.sub(r"^downsample_layers\.(\d+)\.conv\.", r"stages.\1.downsample.conv.", k)
        k = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
        k = re.sub(r"^head\.", "head.fc.", k)  # a Linear or an MlpHead
        k = re.sub(r"^norm\.", "head.norm.", k)
        out[k] = v
    return _reshape_like(out, model.state_dict())


# -- variants ----------------------------------------------------------------------------------------------------
def _width_quantum(arch, i: int) -> int:
    """Attention stages keep whole heads: widths are multiples of head_dim (32 for the baselines)."""
    n = len(arch["dims"])
    mixer = get_mixer(_per_stage(arch.get("token_mixers", "pooling"), n)[i])
    if issubclass(mixer, Attention):
        return _per_stage(arch.get("mixer_kwargs") or {}, n)[i].get("head_dim", 32)
    return 8


_SPEC = ArchSpec(depths="depths", widths="dims", width_quantum=_width_quantum)


def _random_mixing_tokens(arch, input_hw: tuple[int, int]) -> dict:
    """RandFormer's random matrices are sized to the token count of stages 3 and 4 (strides 16 and 32)."""
    h, w = input_hw
    return dict(mixer_kwargs=({}, {}, dict(num_tokens=(h // 16) * (w // 16)), dict(num_tokens=(h // 32) * (w // 32))))


_V1_PAPER = Paper("MetaFormer Is Actually What You Need for Vision", "2111.11418", "sail-sg/poolformer")
_V2_PAPER = Paper("MetaFormer Baselines for Vision", "2210.13452", "sail-sg/metaformer")
_SRC_V1 = ("top-1 and crop: sail-sg/poolformer README @a075575; params and MACs: timm result tables @aa4b585, "
           "the exact counts the README rounds (s12 12M / 1.8G)")
_SRC_V2_TIMM = ("top-1: sail-sg/metaformer README @64c534a (IN-1k, 224); params and MACs: timm result tables "
                "@aa4b585, the exact counts the README rounds")
_SRC_V2 = "params, MACs and top-1: sail-sg/metaformer README @64c534a (IN-1k, 224)"

_S12 = dict(depths=(2, 2, 6, 2), dims=(64, 128, 320, 512))
_S24 = dict(depths=(4, 4, 12, 4), dims=(64, 128, 320, 512))
_S36 = dict(depths=(6, 6, 18, 6), dims=(64, 128, 320, 512))
_M36 = dict(depths=(6, 6, 18, 6), dims=(96, 192, 384, 768))
_M48 = dict(depths=(8, 8, 24, 8), dims=(96, 192, 384, 768))
_CONV_S18 = dict(depths=(3, 3, 9, 3), dims=(64, 128, 320, 512))
_CONV_S36 = dict(depths=(3, 12, 18, 3), dims=(64, 128, 320, 512))
_CONV_M36 = dict(depths=(3, 12, 18, 3), dims=(96, 192, 384, 576))
_CONV_B36 = dict(depths=(3, 12, 18, 3), dims=(128, 256, 512, 768))

# PoolFormer v1: GroupNorm (with bias), GELU MLP with biases, layer scale, no residual scale, no norm in the stem
# or downsampling, and the final GroupNorm applied to the whole map before pooling.
register_family(
    "poolformer", MetaFormer, paper=_V1_PAPER, spec=_SPEC, converter=convert_poolformer_v1, timm=True,
    arch=dict(token_mixers="pooling", norm_layers=GroupNorm1, downsample_norm=None, mlp_act=nn.GELU, mlp_bias=True,
              res_scale_init_values=None, output_norm=GroupNorm1, pre_pool_norm=True),
    card=Card(source=_SRC_V1, notes="the final GroupNorm acts on the map before pooling, as in the official code; "
                                    "timm's port pools first and normalises with LayerNorm, so its logits differ "
                                    "while its weights load unchanged"),
    variants={
        "poolformer_s12": variant(**_S12, layer_scale_init_values=1e-5, card=Card(
            params_m=11.92, macs_g=1.82, top1=77.2, drop_path_rate=0.1, crop_pct=0.9)),
        "poolformer_s24": variant(**_S24, layer_scale_init_values=1e-5, card=Card(
            params_m=21.39, macs_g=3.41, top1=80.3, drop_path_rate=0.1, crop_pct=0.9)),
        "poolformer_s36": variant(**_S36, layer_scale_init_values=1e-6, card=Card(
            params_m=30.86, macs_g=5.00, top1=81.4, drop_path_rate=0.2, crop_pct=0.9)),
        "poolformer_m36": variant(**_M36, layer_scale_init_values=1e-6, card=Card(
            params_m=56.17, macs_g=8.80, top1=82.1, drop_path_rate=0.3, crop_pct=0.95)),
        "poolformer_m48": variant(**_M48, layer_scale_init_values=1e-6, card=Card(
            params_m=73.47, macs_g=11.59, top1=82.5, drop_path_rate=0.4, crop_pct=0.95)),
    })

# The baselines: no-bias "modified LN" (GroupNorm1) in blocks, no-bias LN in stem/downsampling, StarReLU, res scale.
register_family(
    "poolformerv2", MetaFormer, paper=_V2_PAPER, spec=_SPEC, converter=convert_metaformer, timm=True,
    arch=dict(token_mixers="pooling", norm_layers=_NO_BIAS_GN), card=Card(source=_SRC_V2_TIMM, crop_pct=1.0),
    variants={
        "poolformerv2_s12": variant(**_S12, card=Card(params_m=11.89, macs_g=1.83, top1=78.0, drop_path_rate=0.1)),
        "poolformerv2_s24": variant(**_S24, card=Card(params_m=21.34, macs_g=3.42, top1=80.7, drop_path_rate=0.1)),
        "poolformerv2_s36": variant(**_S36, card=Card(params_m=30.79, macs_g=5.01, top1=81.6, drop_path_rate=0.2)),
        "poolformerv2_m36": variant(**_M36, card=Card(params_m=56.08, macs_g=8.81, top1=82.2, drop_path_rate=0.3)),
        "poolformerv2_m48": variant(**_M48, card=Card(params_m=73.35, macs_g=11.59, top1=82.6, drop_path_rate=0.4)),
    })

register_family(
    "identityformer", MetaFormer, paper=_V2_PAPER, spec=_SPEC, converter=convert_metaformer,
    arch=dict(token_mixers="identity", norm_layers=_NO_BIAS_GN), card=Card(source=_SRC_V2, crop_pct=1.0),
    variants={
        "identityformer_s12": variant(**_S12, card=Card(params_m=11.9, macs_g=1.8, top1=74.6, drop_path_rate=0.1)),
        "identityformer_s24": variant(**_S24, card=Card(params_m=21.3, macs_g=3.4, top1=78.2, drop_path_rate=0.1)),
        "identityformer_s36": variant(**_S36, card=Card(params_m=30.8, macs_g=5.0, top1=79.3, drop_path_rate=0.2)),
        "identityformer_m36": variant(**_M36, card=Card(params_m=56.1, macs_g=8.8, top1=80.0, drop_path_rate=0.3)),
        "identityformer_m48": variant(**_M48, card=Card(params_m=73.3, macs_g=11.5, top1=80.4, drop_path_rate=0.4)),
    })

register_family(
    "randformer", MetaFormer, paper=_V2_PAPER, converter=convert_metaformer,
    spec=ArchSpec(depths="depths", widths="dims", input_step=32, at_input_size=_random_mixing_tokens),
    arch=dict(token_mixers=("identity", "identity", "random", "random"), norm_layers=_NO_BIAS_GN,
              **_random_mixing_tokens(None, (224, 224))),
    card=Card(source=_SRC_V2, crop_pct=1.0, notes="the frozen random mixing matrices fix the input at 224x224"),
    variants={
        "randformer_s12": variant(**_S12, card=Card(params_m=11.9, frozen_params_m=0.2, macs_g=1.9, top1=76.6,
                                                    drop_path_rate=0.1)),
        "randformer_s24": variant(**_S24, card=Card(params_m=21.3, frozen_params_m=0.5, macs_g=3.5, top1=78.2,
                                                    drop_path_rate=0.1)),
        "randformer_s36": variant(**_S36, card=Card(params_m=30.8, frozen_params_m=0.7, macs_g=5.2, top1=79.5,
                                                    drop_path_rate=0.2)),
        "randformer_m36": variant(**_M36, card=Card(params_m=56.1, frozen_params_m=0.7, macs_g=9.0, top1=81.2,
                                                    drop_path_rate=0.3)),
        "randformer_m48": variant(**_M48, card=Card(params_m=73.3, frozen_params_m=0.9, macs_g=11.9, top1=81.4,
                                                    drop_path_rate=0.3)),
    })

register_family(
    "convformer", MetaFormer, paper=_V2_PAPER, spec=_SPEC, converter=convert_metaformer, timm=True,
    arch=dict(token_mixers="sepconv", norm_layers=_NO_BIAS_LN2D, use_mlp_head=True),
    card=Card(source=_SRC_V2_TIMM, crop_pct=1.0),
    variants={
        "convformer_s18": variant(**_CONV_S18, card=Card(params_m=26.77, macs_g=3.96, top1=83.0, drop_path_rate=0.2)),
        "convformer_s36": variant(**_CONV_S36, card=Card(params_m=40.01, macs_g=7.67, top1=84.1, drop_path_rate=0.3)),
        "convformer_m36": variant(**_CONV_M36, card=Card(params_m=57.05, macs_g=12.89, top1=84.5, drop_path_rate=0.4)),
        "convformer_b36": variant(**_CONV_B36, card=Card(params_m=99.88, macs_g=22.69, top1=84.8, drop_path_rate=0.6)),
    })

register_family(
    "caformer", MetaFormer, paper=_V2_PAPER, spec=_SPEC, converter=convert_metaformer, timm=True,
    arch=dict(token_mixers=("sepconv", "sepconv", "attention", "attention"), use_mlp_head=True,
              norm_layers=(_NO_BIAS_LN2D, _NO_BIAS_LN2D, _NO_BIAS_LN, _NO_BIAS_LN)),
    card=Card(source=_SRC_V2_TIMM, crop_pct=1.0),
    variants={
        "caformer_s18": variant(**_CONV_S18, card=Card(params_m=26.34, macs_g=4.13, top1=83.6, drop_path_rate=0.15)),
        "caformer_s36": variant(**_CONV_S36, card=Card(params_m=39.30, macs_g=8.00, top1=84.5, drop_path_rate=0.3)),
        "caformer_m36": variant(**_CONV_M36, card=Card(params_m=56.20, macs_g=13.29, top1=85.2, drop_path_rate=0.4)),
        "caformer_b36": variant(**_CONV_B36, card=Card(params_m=98.75, macs_g=23.22, top1=85.5, drop_path_rate=0.6)),
    })
