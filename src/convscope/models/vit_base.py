"""The shared contract of the ViT-style token models (VOLO, ConViT, CrossViT): patch embedding -> a sequence of
units (blocks or groups of blocks) tapped for stage-like feature maps -> token post-processing -> head.

`ConvScopeModel` assumes stem -> stages -> pooled head; these networks carry class tokens, add an absolute
position embedding sized for one input and classify from tokens, so the contract is written once here:

- `forward_features` returns tokens (B, N, C) (`traits.features_fmt == "NLC"`), `forward_head(tokens, pre_logits)` the
  logits; `forward_intermediates` and `features_only` give NCHW maps at the units listed in `tap_units` (patch
  tokens only, reshaped at the patch stride, as timm does for ViTs).
- inputs must be multiples of `traits.input_multiple` (ValueError naming the constraint); position embeddings are
  resampled to the input's token grid with `resample_pos_embed` (bicubic with antialiasing, as timm's
  `resample_abs_pos_embed`; ONNX needs opset 18 for an antialiased Resize).

A subclass builds `self.<units_name>` (an nn.ModuleList or nn.Sequential), sets `tap_units` (the unit after which
each feature_info entry is taken) and implements `embed`, `run_unit` (optional), `tap`, `finish`, `forward_head`,
`reset_classifier` and `prune_tail`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import Mlp, drop_path_or_identity
from .base import MATCH_PREV_GROUP, ConvScopeModel
from .features import feature_take_indices


def resample_pos_embed(pos: torch.Tensor, size: tuple[int, int], channels_last: bool = True) -> torch.Tensor:
    """A (1, H, W, C) (or (1, C, H, W) when not `channels_last`) position embedding resized to `size` with
    bicubic interpolation and antialiasing (timm's `resample_abs_pos_embed`); unchanged when already that size."""
    hw = tuple(pos.shape[1:3]) if channels_last else tuple(pos.shape[2:4])
    if hw == tuple(size):
        return pos
    x = pos.permute(0, 3, 1, 2) if channels_last else pos
    x = F.interpolate(x.float(), size=tuple(size), mode="bicubic", antialias=True, align_corners=False).to(pos.dtype)
    return x.permute(0, 2, 3, 1) if channels_last else x


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(attn(LN(x))), then x + DropPath(MLP(LN(x))).

    `attn` is any token mixer of the shape it is given (tokens or a channels-last map)."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-5, drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokenModel(ConvScopeModel):
    """Base of the token models (see the module docstring)."""

    #: Attribute holding the units (blocks or groups of blocks) that `forward_intermediates` walks.
    units_name: str = "blocks"

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__(in_chans, num_classes)
        self.tap_units: list[int] = []
        self.grad_checkpointing = False

    # -- input ---------------------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        h, w = x.shape[-2:]
        m = self.traits.input_multiple
        if h % m or w % m:
            raise ValueError(f"{self.model_name} needs H and W multiples of {m} (its patch stride); got {h}x{w}")

    # -- subclass hooks ------------------------------------------------------------------------------------------
    @property
    def units(self) -> nn.Module:
        return getattr(self, self.units_name)

    def embed(self, x: torch.Tensor) -> Any:
        """The state entering unit 0."""
        raise NotImplementedError

    def run_unit(self, i: int, state: Any) -> Any:
        unit = self.units[i]
        if self.grad_checkpointing and torch.is_grad_enabled() and isinstance(state, torch.Tensor):
            return checkpoint(unit, state, use_reentrant=False)
        return unit(state)

    def tap(self, state: Any, index: int, norm: bool, hw: tuple[int, int]) -> torch.Tensor:
        """Feature `index` (a feature_info position) as an NCHW map, from the state after its unit (the input
        was `hw`; the map is at that feature's `reduction`)."""
        raise NotImplementedError

    def finish(self, state: Any) -> Any:
        """Tokens after the last unit: class-token blocks, final norm."""
        raise NotImplementedError

    def prune_tail(self) -> None:
        """Drop what follows the units (class blocks, head) for a backbone that returns only intermediates."""
        raise NotImplementedError

    # -- training helpers ----------------------------------------------------------------------------------------
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer grouping (see `ConvScopeModel.group_matcher`): the patch embedding and the model's own
        tables (position embeddings, class tokens) are the stem; then one group per unit (fine: per block of a unit
        that is a sequence of blocks, its other layers with its first block), then the class-attention blocks
        (`post_network`), the final norm with the group before it; the head matches nothing (last)."""
        own = [n for n, _ in self.named_parameters(recurse=False)]
        stem = r"^patch_embed\." + "".join(rf"|^{re.escape(n)}$" for n in own)
        u = re.escape(self.units_name)
        blocks = [(rf"^{u}\.(\d+)\.", (0,))]
        if not coarse:   # a unit that is a sequence of blocks: one group per block
            blocks.insert(0, (rf"^{u}\.(\d+)\.(\d+)\.", None))
        post = [(r"^post_network\.(\d+)\.", None)] if hasattr(self, "post_network") else []
        return dict(stem=stem, blocks=blocks, blocks2=[*post, (r"^norm\.", MATCH_PREV_GROUP)])

    # -- forward -------------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> Any:
        self.check_input(x)
        state = self.embed(x)
        for i in range(len(self.units)):
            state = self.run_unit(i, state)
        return self.finish(state)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Feature maps at the units in `tap_units` selected by `indices` (timm semantics), and the final tokens
        unless `intermediates_only`. `output_fmt="NLC"` gives them as (B, H*W, C) tokens instead."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC'; got {output_fmt!r}")
        self.check_input(x)
        take, max_index = feature_take_indices(len(self.tap_units), indices)
        n = len(self.units)
        last = self.tap_units[max_index] if (stop_early or intermediates_only) else n - 1
        state = self.embed(x)
        out = []
        for i in range(last + 1):
            state = self.run_unit(i, state)
            for k in take:
                if self.tap_units[k] == i:
                    t = self.tap(state, k, norm, tuple(x.shape[-2:]))
                    out.append(t.flatten(2).transpose(1, 2) if output_fmt == "NLC" else t)
        if intermediates_only:
            return out
        return self.finish(state), out

    # -- head and extraction -------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def prune_intermediate_layers(self, indices: int | Sequence[int] | None = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep the units up to the last wanted tap and drop what follows them (a features-only backbone)."""
        take, max_index = feature_take_indices(len(self.tap_units), indices)
        units = self.units
        keep = self.tap_units[max_index] + 1
        setattr(self, self.units_name, type(units)(*list(units)[:keep]) if isinstance(units, nn.Sequential)
                else nn.ModuleList(list(units)[:keep]))
        self.feature_info = self.feature_info[:max_index + 1]
        self.tap_units = self.tap_units[:max_index + 1]
        self.num_features = self.feature_info[-1]["num_chs"]
        self.prune_tail()
        self.num_classes = 0
        return take
