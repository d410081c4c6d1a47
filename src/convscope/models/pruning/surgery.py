"""Pruning surgery: physically removing hidden channels, heads and stage channels from a model, in place.

`slim_hidden_`, `slim_heads_` and `slim_stage_` keep the given units of one group (the pruner's `slim_` calls them
with a plan; `apply_spec_` with the first n units of each group, to rebuild a pruned architecture before its
weights are loaded). `KeptChannelNorm` is the masked model's LayerNorm over a pruned stage.
"""
from __future__ import annotations

import torch
from torch import nn

from ...layers.grn import GlobalResponseNorm
from ...layers.norm import LayerNorm2d
from ...layers.se import SqueezeExcite
from .groups import (
    HeadGroup,
    HiddenGroup,
    StageGroup,
    apply_elementwise,
    follower_kind,
    head_cols,
    head_rows,
    layer_width,
    resolve_member,
)


def dropped_mask(width: int, keep: torch.Tensor) -> torch.Tensor:
    drop = torch.ones(width, dtype=torch.bool)
    drop[keep] = False
    return drop


class KeptChannelNorm(nn.Module):
    """A LayerNorm of the masked model over a pruned stage: statistics over the kept channels only (what the
    slimmed model's LayerNorm computes), 0 on the removed ones. Zeroing a channel would not do: LayerNorm's mean
    and variance over all C channels would still count it."""

    def __init__(self, norm: nn.LayerNorm, keep: torch.Tensor) -> None:
        super().__init__()
        self.norm = norm
        self.channel_dim = 1 if isinstance(norm, LayerNorm2d) else -1
        self.register_buffer("keep", keep.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm
        xc = x.movedim(self.channel_dim, -1)
        w = None if n.weight is None else n.weight[self.keep]
        b = None if n.bias is None else n.bias[self.keep]
        y = nn.functional.layer_norm(xc.index_select(-1, self.keep), (len(self.keep),), w, b, n.eps)
        out = torch.zeros_like(xc).index_copy(-1, self.keep, y)
        return out.movedim(-1, self.channel_dim)


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def zero_slices_(layer: nn.Module, drop: torch.Tensor) -> None:
    layer.weight[drop] = 0
    if layer.bias is not None:
        layer.bias[drop] = 0


def _constant_at_consumer(followers: list[nn.Module], width: int) -> torch.Tensor:
    """What the followers of a masked group make of a removed channel (act(0), StarReLU's bias), per channel."""
    x = torch.zeros(width)
    for f in followers:
        kind = follower_kind(f, width)
        if kind in ("conv", "bn", "grn", "se"):
            x = torch.zeros(width)  # masked writers give 0; GRN and SE were checked to get 0 and give 0
            if kind == "bn":
                for c in f.children():
                    x = apply_elementwise(c, x)
        else:
            x = apply_elementwise(f, x)
    return x


def _index_layer(layer: nn.Module, idx: torch.Tensor, dim: int) -> None:
    layer.weight = nn.Parameter(layer.weight.detach().index_select(dim, idx).clone(),
                                requires_grad=layer.weight.requires_grad)
    if dim == 0 and layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[idx].clone(), requires_grad=layer.bias.requires_grad)
    n = len(idx)
    if isinstance(layer, nn.Linear):
        if dim == 0:
            layer.out_features = n
        else:
            layer.in_features = n
    elif dim == 0:
        layer.out_channels = n
    else:
        layer.in_channels = n


def _index_param(owner: nn.Module, name: str, idx: torch.Tensor) -> None:
    parent, _, leaf = name.rpartition(".")
    mod = owner.get_submodule(parent) if parent else owner
    t = getattr(mod, leaf)
    if isinstance(t, nn.Linear):
        _index_layer(t, idx, 0)
    else:
        setattr(mod, leaf, nn.Parameter(t.detach()[idx].clone(), requires_grad=t.requires_grad))


@torch.no_grad()
def slim_heads_(model: nn.Module, g: HeadGroup, keep: torch.Tensor) -> None:
    m, qkv, proj = g.modules(model)
    h, d = m.num_heads, m.head_dim
    _index_layer(qkv, head_rows(keep, h, d), 0)
    _index_layer(proj, head_cols(keep, d), 1)
    for name in g.per_head:
        _index_param(m, name, keep)
    m.num_heads = len(keep)
    if hasattr(m, "attn_dim"):
        m.attn_dim = len(keep) * d


@torch.no_grad()
def _fold_dropped_constant_(c: nn.Module, followers: list[nn.Module], width: int, drop: torch.Tensor) -> None:
    """The consumer `c` of a masked group gains W[:, dropped] @ const[dropped] in its bias (a 1x1 conv or linear:
    a per-output constant), what the removed channels fed it."""
    const = _constant_at_consumer(followers, width)
    wd = c.weight.detach()[:, drop]
    extra = (wd.flatten(2).sum(2) if wd.ndim > 2 else wd) @ const[drop]
    if extra.abs().max() > 0:
        if c.bias is None:
            c.bias = nn.Parameter(extra.clone())
        else:
            c.bias += extra


@torch.no_grad()
def slim_hidden_(model: nn.Module, g: HiddenGroup, keep: torch.Tensor) -> None:
    _, p, followers, c = g.modules(model)
    width = layer_width(p)
    drop = dropped_mask(width, keep)
    if drop.any() and not c.weight.is_meta:   # on the meta device (shapes only) there are no values to carry
        _fold_dropped_constant_(c, followers, width, drop)
    _index_layer(p, keep, 0)
    _index_layer(c, keep, 1)
    seen = set()
    for f in followers:
        if id(f) in seen:
            continue  # a module called twice (MOAT's shared activation)
        seen.add(id(f))
        if isinstance(f, GlobalResponseNorm):
            factor = width / len(keep)
            f.weight = nn.Parameter(f.weight.detach()[keep] * factor)
            if f.bias is not None:
                f.bias = nn.Parameter(f.bias.detach()[keep].clone())
            f.eps = f.eps * factor
            shape = list(f.affine_shape)
            shape[f.channel_dim] = len(keep)
            f.affine_shape = tuple(shape)
        elif isinstance(f, nn.BatchNorm2d):
            _slim_bn(f, keep)
        elif isinstance(f, nn.Conv2d):
            _slim_grouped(f, keep, width)
        elif isinstance(f, SqueezeExcite):
            _slim_se(f, keep)


def _slim_bn(f: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    for name in ("weight", "bias"):
        t = getattr(f, name)
        if t is not None:
            setattr(f, name, nn.Parameter(t.detach()[keep].clone(), requires_grad=t.requires_grad))
    f.running_mean = f.running_mean[keep].clone()
    f.running_var = f.running_var[keep].clone()
    f.num_features = len(keep)


def _slim_grouped(f: nn.Conv2d, keep: torch.Tensor, width: int) -> None:
    """A depthwise or grouped conv (in = out = width) keeps the channels `keep` (whole groups)."""
    per_group = width // f.groups
    _index_layer(f, keep, 0)
    f.in_channels = len(keep)
    f.groups = len(keep) // per_group


def _slim_se(f: SqueezeExcite, keep: torch.Tensor) -> None:
    _index_layer(f.fc1, keep, 1)
    _index_layer(f.fc2, keep, 0)


@torch.no_grad()
def slim_stage_(model: nn.Module, g: StageGroup, keep: torch.Tensor) -> None:
    width = g.size(model)
    parts = g.parts(model)
    for path, role in g.members:
        t = resolve_member(model, path)
        if role in ("out", "in"):
            _index_layer(t, keep, 0 if role == "out" else 1)
        elif role == "dw":
            for m in list(t.modules()):
                if isinstance(m, nn.Conv2d):
                    _slim_grouped(m, keep, width)
                elif isinstance(m, nn.BatchNorm2d):
                    _slim_bn(m, keep)
        elif role == "norm":
            if isinstance(t, KeptChannelNorm):  # slimming a masked model
                t = t.norm
                set_module(model, path, t)
            if isinstance(t, nn.BatchNorm2d):
                _slim_bn(t, keep)
            elif isinstance(t, nn.LayerNorm):
                for name in ("weight", "bias"):
                    p = getattr(t, name)
                    if p is not None:
                        setattr(t, name, nn.Parameter(p.detach()[keep].clone(), requires_grad=p.requires_grad))
                t.normalized_shape = (len(keep),)
        elif role == "scale":
            _index_param(model, path + ".scale" if isinstance(t, nn.Module) else path, keep)
        elif role == "se":
            _slim_se(t, keep)
        elif role == "split":
            sizes = []
            for (off, n, _), conv in zip(parts, (None, t.dwconv_hw, t.dwconv_w, t.dwconv_h), strict=False):
                local = keep[(keep >= off) & (keep < off + n)] - off
                sizes.append(len(local))
                if conv is not None:
                    _slim_grouped(conv, local, n)
            t.split_sizes = tuple(sizes)
    i = int(g.path.rsplit(".", 1)[1])
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and i < len(info) and isinstance(info[i], dict):
        info[i]["num_chs"] = len(keep)
    model.traits = model.traits.with_stage_width(i, len(keep))
    if i == len(model.stages) - 1:
        model.num_features = len(keep)
        if hasattr(model.head, "in_features"):
            model.head.in_features = len(keep)


