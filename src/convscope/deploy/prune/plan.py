"""The pruner's driver: rank every unit of the chosen scopes model-wide, decide what each group keeps
(`plan_pruning`), then mask (`mask_`) or remove (`slim_`) what it drops; `prune` plans and slims in one call."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ...layers.grn import GlobalResponseNorm
from ...models.pruning.groups import (
    Group,
    HeadGroup,
    StageGroup,
    check_scopes,
    head_rows,
    layer_width,
    prunable_groups,
    resolve_member,
)
from ...models.pruning.surgery import (
    KeptChannelNorm,
    dropped_mask,
    set_module,
    slim_heads_,
    slim_hidden_,
    slim_stage_,
    zero_slices_,
)
from .scoring import magnitude_scores, taylor_scores


# -- the plan ----------------------------------------------------------------------------------------------------------
@dataclass
class PrunePlan:
    groups: list[Group]
    keep: list[torch.Tensor]  # per group, sorted indices of the kept hidden channels / heads

    def widths(self) -> dict[str, int]:
        return {g.path: len(k) for g, k in zip(self.groups, self.keep, strict=False)}


def plan_pruning(model: nn.Module, ratio: float, *, scopes: Iterable[str] = ("mlp",), head_ratio: float | None = None,
                 stage_ratio: float | None = None, importance: str = "magnitude", loader: Iterable | None = None,
                 min_keep: float = 0.1, quantum: int = 8) -> PrunePlan:
    """Remove about `ratio` of all hidden channels (scope "mlp"), `head_ratio` of all heads (scope "heads") and
    `stage_ratio` of all stage channels (scope "stage"; both default to `ratio`), the least important first across
    the whole model (scores normalised by their group's mean, so the allocation per layer follows the scores)."""
    scopes = check_scopes(scopes)
    head_ratio = ratio if head_ratio is None else head_ratio
    stage_ratio = ratio if stage_ratio is None else stage_ratio
    for what, r in (("ratio", ratio), ("head_ratio", head_ratio), ("stage_ratio", stage_ratio)):
        if not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ValueError(f"{what} must be in [0, 1); got {r!r}")
    if not 0 < min_keep <= 1:
        raise ValueError(f"min_keep must be in (0, 1]; got {min_keep}")
    if not isinstance(quantum, int) or quantum < 1:
        raise ValueError(f"quantum must be a positive integer; got {quantum!r}")
    groups = prunable_groups(model, scopes)
    for s in scopes:
        if not any(g.kind == s for g in groups):
            what = {"mlp": "MLP hidden channels", "heads": "attention heads",
                    "stage": "stage channels (blocks declaring prune_stream)"}[s]
            raise ValueError(f"{type(model).__name__} has no prunable {what} (scope {s!r})")
    if importance == "magnitude":
        scores = magnitude_scores(model, groups)
    elif importance == "taylor":
        if loader is None:
            raise ValueError("Taylor importance needs a loader of (images, labels)")
        scores = taylor_scores(model, groups, loader)
    else:
        raise ValueError(f"importance must be 'magnitude' or 'taylor'; got {importance!r}")
    bad = next((g.path for g, s in zip(groups, scores, strict=True) if not torch.isfinite(s).all()), None)
    if bad is not None:
        raise ValueError(f"the {importance} scores of {bad!r} are not finite: the model's weights (or, for taylor, "
                         "its gradients) hold NaN or infinity")
    keep: list[torch.Tensor | None] = [None] * len(groups)
    for scope in scopes:
        idx = [i for i, g in enumerate(groups) if g.kind == scope]
        r = dict(mlp=ratio, heads=head_ratio, stage=stage_ratio)[scope]
        for i, k in zip(idx, _allocate([groups[i] for i in idx], [scores[i] for i in idx], r, min_keep,
                                       1 if scope == "heads" else quantum), strict=False):
            g = groups[i]
            parts = g.parts(model) if isinstance(g, StageGroup) else None
            for off, n, needed in parts or ():
                inside = (k >= off) & (k < off + n)
                if needed and not inside.any():  # a depthwise part keeps at least its best channel
                    best = off + int(torch.argmax(scores[i][off:off + n]))
                    k = torch.sort(torch.cat([k, torch.tensor([best])])).values
            keep[i] = k
    return PrunePlan(groups, keep)


def _allocate(groups: list[Group], scores: list[torch.Tensor], ratio: float, min_keep: float,
              quantum: int) -> list[torch.Tensor]:
    """Kept indices per group: units ranked globally by score / group mean; a unit of m channels counts m."""
    units = []
    for g, s in zip(groups, scores, strict=False):
        u = g.unit
        us = s.view(-1, u).mean(1)
        units.append(us / us.mean().clamp_min(1e-12))
    flat = torch.cat([us.repeat_interleave(g.unit) for g, us in zip(groups, units, strict=False)])
    n_remove = int(round(ratio * len(flat)))
    threshold = flat.kthvalue(n_remove).values.item() if n_remove > 0 else -math.inf
    keep = []
    for g, us in zip(groups, units, strict=False):
        n, u = len(us), g.unit
        k = int((us > threshold).sum())
        k = max(k, math.ceil(min_keep * n), 1)
        q = math.lcm(quantum, u) // u  # in units
        if q > 1:
            k = min(n, max(q, int(round(k / q)) * q))
        kept_units = torch.sort(torch.topk(us, k).indices).values
        keep.append((kept_units[:, None] * u + torch.arange(u)).flatten())
    return keep



@torch.no_grad()
def mask_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Zero, in place, every parametric slice that writes a removed unit: the masked model."""
    for g, keep in zip(plan.groups, plan.keep, strict=False):
        if isinstance(g, StageGroup):
            _mask_stage(model, g, keep)
            continue
        if isinstance(g, HeadGroup):
            m, qkv, _ = g.modules(model)
            rows = dropped_mask(qkv.out_features, head_rows(keep, m.num_heads, m.head_dim))
            qkv.weight[rows] = 0
            if qkv.bias is not None:
                qkv.bias[rows] = 0
            continue
        _, p, followers, _ = g.modules(model)
        drop = dropped_mask(layer_width(p), keep)
        for layer in [p] + [f for f in followers if isinstance(f, (nn.Conv2d, nn.BatchNorm2d, GlobalResponseNorm))]:
            layer.weight[drop] = 0
            if layer.bias is not None:
                layer.bias[drop] = 0
    return model


@torch.no_grad()
def _mask_stage(model: nn.Module, g: StageGroup, keep: torch.Tensor) -> None:
    """Removed stage channels become exactly 0 everywhere: their writers (rows, depthwise filters, BatchNorm
    affine, Inception parts) are zeroed, LayerNorms take statistics over the kept channels."""
    drop = dropped_mask(g.size(model), keep)
    for path, role in g.members:
        t = resolve_member(model, path)
        if role == "out":
            zero_slices_(t, drop)
        elif role == "dw":
            for m in t.modules():
                if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                    zero_slices_(m, drop)
        elif role == "norm" and isinstance(t, nn.BatchNorm2d):
            zero_slices_(t, drop)
        elif role == "norm" and isinstance(t, nn.LayerNorm):
            set_module(model, path, KeptChannelNorm(t, keep))
        elif role == "split":
            for (off, n, _), conv in zip(g.parts(model), (None, t.dwconv_hw, t.dwconv_w, t.dwconv_h), strict=False):
                if conv is not None:
                    zero_slices_(conv, drop[off:off + n])


@torch.no_grad()
def slim_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Remove the pruned units physically, in place; outputs equal those of `mask_(model, plan)`."""
    for g, keep in zip(plan.groups, plan.keep, strict=False):
        if isinstance(g, HeadGroup):
            slim_heads_(model, g, keep)
        elif isinstance(g, StageGroup):
            slim_stage_(model, g, keep)
        else:
            slim_hidden_(model, g, keep)
    return model



def prune(model: nn.Module, ratio: float, **kwargs) -> tuple[nn.Module, PrunePlan]:
    """Plan and slim `model` in place; returns (model, plan)."""
    plan = plan_pruning(model, ratio, **kwargs)
    return slim_(model, plan), plan
