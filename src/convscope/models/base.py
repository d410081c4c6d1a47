"""The model contract shared by every registered network (timm-compatible)."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..layers import checkpoint_seq, drop_path_rates
from .features import feature_take_indices
from .traits import ModelTraits

if TYPE_CHECKING:
    from .registry import ModelCard

NormFactory = Callable[[int], nn.Module]

#: the last name of the parameters that are tables of positions or learned tokens (kept out of weight decay, as
#: timm's `no_weight_decay()` keeps them): absolute position embeddings, class tokens, relative-position bias tables
NO_WEIGHT_DECAY = re.compile(r"^(pos_embed(_\d+)?|cls_token(_\d+)?|relative_position_bias_table|"
                             r"relative_pos_bias_local|learnable_tokens|learnable_bias|height_rel|width_rel|attention_biases)$")
#: timm's MATCH_PREV_GROUP: a group-matcher suffix that puts a layer in the group before it
MATCH_PREV_GROUP = (99999,)


class Stage(nn.Module):
    """One resolution stage: an optional downsampling layer, then a sequence of blocks."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_blocks(self.downsample(x))


def patchify_stem(in_chans: int, dim: int, norm_layer: NormFactory, patch_size: int = 4) -> nn.Sequential:
    """A non-overlapping patch_size x patch_size conv, then a norm (ConvNeXt's "patchify" stem)."""
    return nn.Sequential(nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), norm_layer(dim))


def norm_conv_downsample(in_chs: int, out_chs: int, norm_layer: NormFactory) -> nn.Sequential:
    """A norm, then a 2x2 stride-2 conv (ConvNeXt's separate downsampling layer)."""
    return nn.Sequential(norm_layer(in_chs), nn.Conv2d(in_chs, out_chs, 2, stride=2))


class ConvScopeModel(nn.Module):
    """Base of the hierarchical models: `stem -> stages -> norm_pre -> head`.

    Subclasses build `stem`, `stages` (an nn.Sequential), optionally `norm_pre`, a `head` with
    `forward(x, pre_logits)` and `reset(num_classes)`, fill `feature_info` and `num_features`, and set `traits`
    from their classmethod `traits_for` (keyword-only parameters named as the constructor's), which the registry
    also calls to answer `model_traits(name)` without building the model.
    This class supplies the rest of the contract: input checking, forward_features / forward_head,
    forward_intermediates, reset_classifier, gradient checkpointing and layer pruning for feature extraction.
    """

    #: The variant's facts (input sizes, feature stages, layout), the same object `model_traits(name)` returns.
    traits: ModelTraits

    @classmethod
    def traits_for(cls, **arguments) -> ModelTraits:
        """The traits of the model these constructor arguments build (each family declares its own)."""
        raise NotImplementedError(f"{cls.__name__} declares no traits_for")

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be a positive channel count; got {in_chans}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 removes the classifier); got {num_classes}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.feature_info: list[dict] = []
        self.num_features = 0
        self.model_name = type(self).__name__
        self.card: ModelCard | None = None  # the registry's card, set by create_model
        self.norm_pre: nn.Module = nn.Identity()

    # -- construction --------------------------------------------------------------------------------------------
    def build_stages(self, depths: Sequence[int], dims: Sequence[int], drop_path_rate: float, *,
                     block: Callable[[int, int, float], nn.Module | Sequence[nn.Module]],
                     downsample: Callable[[int], nn.Module | None],
                     stage: Callable[[int, nn.Module | None, list[nn.Module]], Stage] | None = None,
                     stem_reduction: int = 4) -> None:
        """Build `stages`, `feature_info` and `num_features` for a four-stage (or n-stage) hierarchy.

        Stage i is `downsample(i)` (called for i >= 1; stage 0 takes the stem's output) followed by
        `block(i, j, drop_path)` for its `depths[i]` blocks, the drop-path rates rising linearly over all blocks
        (a block may be a sequence of modules that share its rate, e.g. RepLKNet's RepLK block and ConvFFN).
        `stage(i, downsample, blocks)` makes the stage module (default `Stage`). Stage i's reduction is
        `stem_reduction * 2**i`.
        """
        if len(depths) != len(dims):
            raise ValueError(f"depths and dims must have one entry per stage; got {len(depths)} and {len(dims)}")
        dpr = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=False)):
            down = downsample(i) if i > 0 else None
            blocks = []
            for j in range(depth):
                b = block(i, j, dpr[i][j])
                blocks.extend(b if isinstance(b, (list, tuple)) else [b])
            stages.append(stage(i, down, blocks) if stage is not None else Stage(down, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=stem_reduction * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]

    # -- input checking ------------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError naming what was expected when `x` cannot go through this network."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.model_name} expects a torch.Tensor; got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{self.model_name} expects a 4-D input (batch, channels, height, width); "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"{self.model_name} expects {self.in_chans} input channels; got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)}); build it with in_chans={x.shape[1]} to change that")
        if not x.is_floating_point():
            raise ValueError(f"{self.model_name} expects a floating-point input; got {x.dtype} (convert images with "
                             f"x.float() / 255 and normalise them)")
        w0 = next(iter(self.parameters()), None)
        if (w0 is not None and w0.dtype != x.dtype and w0.device.type != "meta"
                and not torch.is_autocast_enabled(x.device.type)):
            raise ValueError(f"{self.model_name} has {w0.dtype} weights but the input is {x.dtype}: cast the input "
                             f"(x.to({w0.dtype})) or the model (model.to({x.dtype})), or run under torch.autocast")
        h, w = x.shape[-2:]
        fixed = self.traits.fixed_input_size
        if fixed is not None and (h, w) != fixed:
            raise ValueError(f"{self.model_name} only takes {fixed[0]}x{fixed[1]} inputs; got {h}x{w}")
        mh, mw = self.traits.min_input_size
        if h < mh or w < mw:
            raise ValueError(f"{self.model_name} needs inputs of at least {mh}x{mw}; got {h}x{w}")

    # -- forward -------------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features of the last stage, (B, num_features, H/32, W/32) for a hierarchical model."""
        self.check_input(x)
        return self.norm_pre(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs selected by `indices` (timm semantics), and the final features unless
        `intermediates_only`. `norm=True` applies `norm_pre` to the last stage's map."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW'; got {output_fmt!r}")
        self.check_input(x)
        take, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages[:max_index + 1] if (stop_early or intermediates_only) else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(self.norm_pre(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        if len(stages) == last + 1:
            x = self.norm_pre(x)
        return x, intermediates

    # -- head ----------------------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head.fc if hasattr(self.head, "fc") else self.head.fc2

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final classifier with a fresh one for `num_classes` (0 removes it)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"only global_pool='avg' is supported; got {global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0; got {num_classes}")
        self.num_classes = num_classes
        self.head.reset(num_classes)

    # -- training / extraction helpers ---------------------------------------------------------------------------
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer grouping for layer-wise lr decay: `stem` (group 0: the stem and parameters held by the model
        itself) and `blocks`, regexes whose captured numbers order the groups by depth (timm's `group_with_matcher`).

        Coarse: one group per stage. Fine: one per block, a stage's layers before its blocks (downsampling, patch
        embedding) with its first block, its layers after them and the layers between the stages and the head
        (`norm_pre`, a final conv) with the block before them. The head matches nothing: timm puts it last."""
        before, after, has_blocks = _stage_layers(self.stages)
        tail = [n for n, _ in self.named_children() if n not in ("stem", "stages", "head")]
        tail_rules = [(rf"^{n}\.", MATCH_PREV_GROUP) for n in tail]
        own = [n for n, _ in self.named_parameters(recurse=False)]
        stem = r"^stem\." + "".join(rf"|^{re.escape(n)}$" for n in own)
        if coarse:
            return dict(stem=stem, blocks=[(r"^stages\.(\d+)\.", None), *tail_rules])
        rules = [(rf"^stages\.(\d+)\.{re.escape(n)}(?:\.|$)", (0,)) for n in before]
        rules.append((r"^stages\.(\d+)\.blocks\.(\d+)\." if has_blocks else r"^stages\.(\d+)\.(\d+)\.", None))
        rules += [(rf"^stages\.(\d+)\.{re.escape(n)}(?:\.|$)", MATCH_PREV_GROUP) for n in after]
        return dict(stem=stem, blocks=rules + tail_rules)

    def no_weight_decay(self) -> set[str]:
        """The parameters kept out of weight decay besides the 1-D ones (which the recipe never decays): position
        embeddings, class tokens and relative-position tables (`NO_WEIGHT_DECAY`)."""
        return {n for n, _ in self.named_parameters() if NO_WEIGHT_DECAY.match(n.rpartition(".")[2])}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass instead of storing them."""
        for m in self.modules():
            if hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable

    def prune_intermediate_layers(self, indices: int | Sequence[int] | None = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop stages after the last wanted index, and the head, for use as a feature backbone."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        if max_index < len(self.stages) - 1 or prune_norm:
            self.norm_pre = nn.Identity()
        self.stages = self.stages[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        self.num_features = self.feature_info[-1]["num_chs"]
        if prune_head:
            self.head = nn.Identity()
            self.num_classes = 0
        return take


def _stage_layers(stages: nn.Module) -> tuple[list[str], list[str], bool]:
    """The names of the stages' layers (submodules and parameters) before their `blocks`, those after them, and
    whether the stages have `blocks` (else each stage is itself the sequence of its blocks)."""
    before: list[str] = []
    after: list[str] = []
    has_blocks = False
    for stage in stages.children():
        names = [n for n, _ in stage.named_children()] + [n for n, _ in stage.named_parameters(recurse=False)]
        if "blocks" not in names:
            continue
        has_blocks, i = True, names.index("blocks")
        before += [n for n in names[:i] if n not in before]
        after += [n for n in names[i + 1:] if n not in after]
    return before, after, has_blocks
