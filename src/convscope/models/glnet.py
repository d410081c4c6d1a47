"""GLNet (Zhu et al., "Revisiting the Integration of Convolution and Attention for Vision Backbone", NeurIPS 2024,
arXiv 2411.14429; official code rayleizhu/GLMix, models/glnet.py).

Blocks mix tokens with GLMix (`layers.mixers.GLMix`): a 1x1 -> 5x5 depthwise -> 1x1 conv on the grid plus
multi-head attention among 64 semantic slots softly clustered from the grid and dispatched back to it. The slots
start from an 8x8 adaptive average pool of the block input (or a learnt table: `glnet_stl_paramslot`).

- GLNet-4G / 9G / 16G: overlapping conv stem (3x3/2, BN, GELU, 3x3/2, BN) and 3x3/2 conv + BN downsampling;
  stages of GLMix blocks, the third alternating GLMix and plain MHSA blocks, the fourth MHSA only; a 3x3
  depthwise conv positional encoding (x + dw(x)) before every block, a residual 3x3 depthwise conv inside the
  MLP (ratio 3), BatchNorm before the head; layer scale 1e-4 for 16G.
- GLNet-STL (Swin-Tiny layout): 4x4 patchify stem, BN + 2x2 conv downsampling, [2, 2, 6, 2] blocks of widths
  96..768, GLMix in stages 1-3, transformer blocks (LayerNorm, MHSA, Linear MLP ratio 4) in stage 4.

Block norms are LayerNorms with eps 1e-6 (timm's LayerNorm2d on maps), as the official blocks default to.
State-dict keys follow the official blocks; `convert_official` maps the official model-level layout
(downsample_layers / stages.i.blocks.j / norm / head) and moves the mixer's tensors under `token_mixer`.

Token-labelling variants (glnet_4g_tklb, glnet_9g_tklb; official models/glnet_tklb.py): the same networks with an
auxiliary linear head applied to every token of the last (normalised) stage map, as VOLO's. The official model
returns, in evaluation, the class logits plus 0.5 x the per-class maximum over the tokens of the auxiliary logits;
`forward` does the same here in both modes (`use_aux_head=True`), and `forward_dense` gives (class logits, per-token
auxiliary logits) for a token-labelling loss. Departure: the official training forward also applies its
"MixToken" CutMix inside the network (on the stem's output, undone on the auxiliary logits) and returns a tuple;
that augmentation is not implemented here.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ..layers import ClassifierHead, LayerNorm2d, drop_path_or_identity
from ..layers.mixers.glmix import GLMix, SlotAttention
from ..layers.reparam import bn_affine, fuse_affine_before_
from .base import ConvScopeModel
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits, hierarchy

LN_EPS = 1e-6


class ResDWConv(nn.Conv2d):
    """x + dwconv_k(x) (biased), the MLP's residual depthwise conv."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _conv_mlp(dim: int, ratio: float, mlp_dw: bool) -> nn.Sequential:
    hidden = int(ratio * dim)
    return nn.Sequential(nn.Conv2d(dim, hidden, 1), ResDWConv(hidden) if mlp_dw else nn.Identity(), nn.GELU(),
                         nn.Conv2d(hidden, dim, 1))


def _gamma(dim: int, init: float) -> nn.Parameter | None:
    return nn.Parameter(torch.full((dim,), float(init))) if init > 0 else None


def _scaled(x: torch.Tensor, gamma: torch.Tensor | None, channels_first: bool = True) -> torch.Tensor:
    if gamma is None:
        return x
    return x * (gamma.view(-1, 1, 1) if channels_first else gamma)


class GLMixBlock(nn.Module):
    """[x + dw3x3(x)] -> x + ls1 * GLMix(LN(x)) -> x + ls2 * MLP(LN(x)); the initial slots pooled from the block
    input (before the positional conv)."""

    def __init__(self, dim: int, num_heads: int, num_slots: int = 64, slot_init: str = "ada_avgpool",
                 local_kernel_size: int = 5, mlp_ratio: float = 4.0, cpe_ks: int = 0, mlp_dw: bool = False,
                 layerscale: float = -1.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pos_conv = nn.Conv2d(dim, dim, cpe_ks, padding=cpe_ks // 2, groups=dim) if cpe_ks > 0 else None
        self.norm1 = LayerNorm2d(dim, eps=LN_EPS)
        self.token_mixer = GLMix(dim, num_heads, num_slots=num_slots, slot_init=slot_init,
                                 local_kernel_size=local_kernel_size)
        self.norm2 = LayerNorm2d(dim, eps=LN_EPS)
        self.mlp = _conv_mlp(dim, mlp_ratio, mlp_dw)
        self.gamma1, self.gamma2 = _gamma(dim, layerscale), _gamma(dim, layerscale)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = self.token_mixer.pooled_slots(x) if self.token_mixer.init_slots is None else None
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        x = x + self.drop_path(_scaled(self.token_mixer(self.norm1(x), slots), self.gamma1))
        return x + self.drop_path(_scaled(self.mlp(self.norm2(x)), self.gamma2))


class MHSABlock(nn.Module):
    """A transformer block on the map: [x + dw3x3(x)] -> tokens: x + ls1 * MHSA(LN(x)) -> map: x + ls2 * MLP(LN(x)).
    `conv_mlp=False` (GLNet-STL's last stage): the MLP is Linear -> GELU -> Linear on tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, cpe_ks: int = 0, mlp_dw: bool = False,
                 layerscale: float = -1.0, conv_mlp: bool = True, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_mlp = conv_mlp
        self.pos_conv = nn.Conv2d(dim, dim, cpe_ks, padding=cpe_ks // 2, groups=dim) if cpe_ks > 0 else None
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mha_op = SlotAttention(dim, num_heads)
        if conv_mlp:
            self.norm2 = LayerNorm2d(dim, eps=LN_EPS)
            self.mlp = _conv_mlp(dim, mlp_ratio, mlp_dw)
        else:
            self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
            hidden = int(mlp_ratio * dim)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.gamma1, self.gamma2 = _gamma(dim, layerscale), _gamma(dim, layerscale)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.drop_path(_scaled(self.mha_op(self.norm1(t)), self.gamma1, False))
        if not self.conv_mlp:
            t = t + self.drop_path(_scaled(self.mlp(self.norm2(t)), self.gamma2, False))
            return t.transpose(1, 2).reshape(B, C, H, W)
        x = t.transpose(1, 2).reshape(B, C, H, W)
        return x + self.drop_path(_scaled(self.mlp(self.norm2(x)), self.gamma2))


class GLNet(ConvScopeModel):
    """GLNet: stem -> four stages (blocks by `mixing_modes`: "glmix", "glmix.mha" alternating, "mha" on the map
    with a conv MLP, "transformer" with a Linear MLP) -> BatchNorm -> pool -> linear."""

    @classmethod
    def traits_for(cls, *, dims: Sequence[int]) -> ModelTraits:
        return hierarchy(dims, input_multiple=32, reparameterizable=True)  # conv-BN stem, downsamplings and norm_pre

    def __init__(self, depths: Sequence[int] = (4, 4, 18, 4), dims: Sequence[int] = (64, 128, 256, 512), *,
                 mlp_ratio: float = 3.0, head_dim: int = 32,
                 mixing_modes: Sequence[str] = ("glmix", "glmix", "glmix.mha", "mha"), local_kernel_size: int = 5,
                 slot_init: str = "ada_avgpool", num_slots: int = 64, cpe_ks: int = 3, overlapped: bool = True,
                 mlp_dw: bool = True, layerscale: float = -1.0, use_aux_head: bool = False, in_chans: int = 3,
                 num_classes: int = 1000, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chans, num_classes)
        self.traits = GLNet.traits_for(dims=dims)
        if any(m not in ("glmix", "glmix.mha", "mha", "transformer") for m in mixing_modes):
            raise ValueError(f"mixing_modes must be 'glmix', 'glmix.mha', 'mha' or 'transformer'; got {mixing_modes}")
        self.overlapped = overlapped
        if overlapped:
            half = dims[0] // 2  # index 0: the official optional input norm (dual_patch_norm), unused
            self.stem = nn.Sequential(nn.Identity(), nn.Conv2d(in_chans, half, 3, 2, 1), nn.BatchNorm2d(half),
                                      nn.GELU(), nn.Conv2d(half, dims[0], 3, 2, 1), nn.BatchNorm2d(dims[0]))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, 4), nn.BatchNorm2d(dims[0]))

        def downsample(i: int) -> nn.Module:
            if overlapped:
                return nn.Sequential(nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1), nn.BatchNorm2d(dims[i]))
            return nn.Sequential(nn.BatchNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, 2))

        def block(i: int, j: int, dp: float) -> nn.Module:
            mode, dim, heads = mixing_modes[i], dims[i], dims[i] // head_dim
            if mode == "glmix" or (mode == "glmix.mha" and j % 2 == 0):
                return GLMixBlock(dim, heads, num_slots, slot_init, local_kernel_size, mlp_ratio, cpe_ks, mlp_dw,
                                  layerscale, dp)
            return MHSABlock(dim, heads, mlp_ratio, cpe_ks, mlp_dw, layerscale, mode != "transformer", dp)

        self.build_stages(depths, dims, drop_path_rate, block=block, downsample=downsample)
        self.norm_pre = nn.BatchNorm2d(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, drop_rate=drop_rate)
        self.use_aux_head = use_aux_head
        self.aux_head = nn.Linear(dims[-1], num_classes) if use_aux_head and num_classes > 0 else None
        self.apply(self._init_weights)

    def foldable_batchnorms(self) -> list[str]:
        """`norm_pre` folds through global average pooling into the classifier when the head is pool -> fc (and into
        the token-labelling head, a Linear on every token, where there is one)."""
        ok = isinstance(self.norm_pre, nn.BatchNorm2d) and self.norm_pre.running_mean is not None and \
            isinstance(self.head.norm, nn.Identity) and isinstance(self.head.fc, nn.Linear)
        return ["norm_pre"] if ok else []

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """The final BatchNorm into the classifier: mean over H x W commutes with a per-channel affine map, so
        fc(mean(s x + t)) = (fc.weight s) mean(x) + fc(t). The deploy form's forward_features (and
        forward_intermediates(norm=True)) then return the map before that BatchNorm; the logits are unchanged. The
        token-labelling head reads each token of the same normalised map, so the affine map folds into it alike."""
        if self.foldable_batchnorms():
            scale, shift = bn_affine(self.norm_pre)
            for fc in (self.head.fc, self.aux_head):
                if fc is not None:
                    fuse_affine_before_(fc, scale, shift)
            self.norm_pre = nn.Identity()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- token-labelling head ------------------------------------------------------------------------------------
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class logits; with the auxiliary head, plus 0.5 x the per-class max over the tokens of its logits."""
        out = self.head(x, pre_logits=pre_logits)
        if pre_logits or self.aux_head is None:
            return out
        return out + 0.5 * self.aux_head(x.flatten(2).transpose(1, 2)).amax(dim=1)

    def forward_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits, per-token auxiliary logits (B, H*W, classes)) for a token-labelling loss."""
        if self.aux_head is None:
            raise ValueError("forward_dense needs the auxiliary head (use_aux_head=True and num_classes > 0)")
        x = self.forward_features(x)
        return self.head(x), self.aux_head(x.flatten(2).transpose(1, 2))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        dev = next(self.parameters()).device
        self.aux_head = (nn.Linear(self.num_features, num_classes, device=dev)
                         if self.use_aux_head and num_classes > 0 else None)
        if self.aux_head is not None:
            self._init_weights(self.aux_head)

    def prune_intermediate_layers(self, indices=None, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        take = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_head:
            self.aux_head = None
        return take

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        h, w = x.shape[-2:]
        if not self.overlapped and (h % 32 or w % 32):
            raise ValueError(f"{self.model_name} needs H and W multiples of 32; got {h}x{w}")


def convert_official(state_dict: dict, model: nn.Module) -> dict:
    """rayleizhu/GLMix keys -> ours: downsample_layers.0 is the stem, downsample_layers.i opens stage i, norm is
    norm_pre, head is head.fc; a GLMix block's relation_mha / feature_conv / slot_scale / init_slots go under
    token_mixer; layer scales ls{1,2}.gamma ((C,) or (1, C, 1, 1)) become gamma{1,2} (C,); the token-labelling
    models' tklb_aux_head is aux_head."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^downsample_layers\.0\.", "stem.", k)
        k = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", k)
        k = re.sub(r"^norm\.", "norm_pre.", k)
        k = re.sub(r"^head\.", "head.fc.", k)
        k = re.sub(r"^tklb_aux_head\.", "aux_head.", k)
        k = re.sub(r"\.(relation_mha|feature_conv|slot_scale|init_slots)\b", r".token_mixer.\1", k)
        m = re.search(r"\.ls([12])\.gamma$", k)
        if m:
            k, v = k[:m.start()] + f".gamma{m.group(1)}", v.reshape(-1)
        out[k] = v
    return out


# -- variants ----------------------------------------------------------------------------------------------------
_SRC = ("rayleizhu/GLMix@3c93dbf README model card (top-1, FLOPs (MACs)); params: the exact count of the official "
        "models/glnet.py constructor, which the README rounds to integer millions")

_SRC_TKLB = ("rayleizhu/GLMix@3c93dbf README model card (top-1 with token labelling, FLOPs (MACs), params rounded "
             "to integer millions) and drop path (0.1 for the token-labelling models); params: the exact count of "
             "the official models/glnet_tklb.py constructor (GLNet plus its tklb_aux_head)")

_NOTE_9G = ("README FLOPs (MACs) 9.7 G: the count is 9.626 G under the fvcore convention (-0.8%, within 1%, but "
            "it rounds to 9.6 while the other variants round to their figures; a listed exception in "
            "convscope.analysis.fidelity). fvcore on the official code itself gives 9.308 G (it skips parts of "
            "nn.MultiheadAttention), so the README did not use plain fvcore")

register_family(
    "glnet", GLNet, paper=Paper("Revisiting the Integration of Convolution and Attention for Vision Backbone",
                                "2411.14429", "rayleizhu/GLMix"),
    spec=ArchSpec(depths="depths", widths="dims", width_quantum=32, input_step=32), converter=convert_official,
    card=Card(macs_convention="fvcore"),
    variants={
        "glnet_4g": variant(depths=(4, 4, 18, 4), dims=(64, 128, 256, 512), card=Card(
            params_m=27.002, macs_g=4.5, top1=83.7, drop_path_rate=0.15, source=_SRC)),
        "glnet_9g": variant(depths=(4, 4, 18, 4), dims=(96, 192, 384, 768), card=Card(
            params_m=60.011, macs_g=9.7, notes=_NOTE_9G, top1=84.5, drop_path_rate=0.3, source=_SRC)),
        "glnet_16g": variant(depths=(4, 4, 18, 4), dims=(128, 256, 512, 1024), layerscale=1e-4, card=Card(
            params_m=106.055, macs_g=16.7, top1=85.0, drop_path_rate=0.4, source=_SRC)),
        "glnet_4g_tklb": variant(depths=(4, 4, 18, 4), dims=(64, 128, 256, 512), use_aux_head=True, card=Card(
            params_m=27.5146, macs_g=4.5, top1=84.4, drop_path_rate=0.1, source=_SRC_TKLB)),
        "glnet_9g_tklb": variant(depths=(4, 4, 18, 4), dims=(96, 192, 384, 768), use_aux_head=True, card=Card(
            params_m=60.7796, macs_g=9.7, top1=85.3, drop_path_rate=0.1, source=_SRC_TKLB)),
        "glnet_stl": variant(
            depths=(2, 2, 6, 2), dims=(96, 192, 384, 768), mlp_ratio=4.0,
            mixing_modes=("glmix", "glmix", "glmix", "transformer"), cpe_ks=0, overlapped=False, mlp_dw=False,
            card=Card(params_m=30.297, macs_g=4.4, top1=82.5, drop_path_rate=0.1, source=_SRC)),
        "glnet_stl_paramslot": variant(
            depths=(2, 2, 6, 2), dims=(96, 192, 384, 768), mlp_ratio=4.0, slot_init="param",
            mixing_modes=("glmix", "glmix", "glmix", "transformer"), cpe_ks=0, overlapped=False, mlp_dw=False,
            card=Card(params_m=30.481, macs_g=4.4, top1=82.1, drop_path_rate=0.1, source=_SRC)),
    })
