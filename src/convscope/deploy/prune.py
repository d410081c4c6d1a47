"""Structured pruning of MLP hidden channels, with physical removal: the pruned model really is smaller.

A *hidden group* is producer -> per-channel followers -> consumer: the MLP's fc1 (Linear or 1x1 conv), the layers
that act on its hidden channels one by one (activations, dropout, BatchNorm, GRN), and fc2. The groups are found
through the shared MLP layers (`Mlp`, `ConvMlp`, `GlobalResponseNormMlp`) and through a declared hook: a block
whose MLP is written out inline sets `prune_hidden = ("pwconv1", ("act", "grn"), "pwconv2")` (UniRepLKNet).
Norms over the hidden channels together (the LayerNorm of an MLP head) make a group unprunable; it is skipped.

Masking a channel zeroes its producer row (weight and bias): its pre-activation is 0, and what reaches the
consumer is a constant (act(0), StarReLU's bias, GRN's beta). Slimming removes the channel from producer,
followers and consumer, and folds that constant into the consumer's bias; GRN, which divides by the mean over
channels, keeps its arithmetic with gamma and eps scaled by C / C'. A masked model and its slimmed form give
equal outputs (tests: 1e-5).

Importance: "magnitude" (L2 norm of the producer row times the consumer column) or "taylor" (|activation x
gradient| summed over a few batches). `plan_pruning` ranks every channel of every group globally (scores
normalised by their group's mean) and removes the lowest `ratio` of all hidden channels, keeping at least
`min_keep` of each group and rounding kept widths to `quantum`. The pruned model is saved as safetensors whose
metadata holds the spec (model name, classes, input channels, and per group the hidden width, consumer bias and
GRN eps); `load_pruned` rebuilds it with `create_model` and the spec, and loads the weights strictly.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..layers.grn import GlobalResponseNorm
from ..layers.mlp import ConvMlp, GlobalResponseNormMlp, Mlp

_RULES: dict[type, tuple[str, tuple[str, ...], str]] = {
    Mlp: ("fc1", ("act", "drop"), "fc2"),
    ConvMlp: ("fc1", ("norm", "act", "drop"), "fc2"),
    GlobalResponseNormMlp: ("fc1", ("act", "drop", "grn"), "fc2"),
}
_LAYERS = (nn.Linear, nn.Conv2d)
_PER_CHANNEL_OK = (nn.Identity, nn.Dropout, nn.GELU, nn.ReLU, nn.SiLU, nn.Hardswish, nn.BatchNorm2d,
                   GlobalResponseNorm)


def _rule(m: nn.Module) -> tuple[str, tuple[str, ...], str] | None:
    declared = getattr(m, "prune_hidden", None)
    if declared is not None:
        return declared
    return _RULES.get(type(m))


def _follower_ok(f: nn.Module) -> bool:
    if isinstance(f, _PER_CHANNEL_OK):
        return True
    # parameter-free activations, or activations with scalar parameters (StarReLU's scale and bias)
    return all(p.numel() == 1 for p in f.parameters(recurse=True)) and not list(f.buffers())


@dataclass
class HiddenGroup:
    path: str
    producer: str
    followers: tuple[str, ...]
    consumer: str

    def modules(self, model: nn.Module):
        m = model.get_submodule(self.path)
        return m, getattr(m, self.producer), [getattr(m, f) for f in self.followers if hasattr(m, f)], \
            getattr(m, self.consumer)


def hidden_groups(model: nn.Module) -> list[HiddenGroup]:
    """Every prunable MLP hidden group of `model` (works on the meta device)."""
    out = []
    for name, m in model.named_modules():
        rule = _rule(m)
        if rule is None:
            continue
        prod, fols, cons = rule
        p, c = getattr(m, prod, None), getattr(m, cons, None)
        if not (isinstance(p, _LAYERS) and isinstance(c, _LAYERS)):
            continue
        if isinstance(p, nn.Conv2d) and (p.kernel_size != (1, 1) or p.groups != 1):
            continue
        if isinstance(c, nn.Conv2d) and c.groups != 1:
            continue
        if not all(_follower_ok(getattr(m, f)) for f in fols if hasattr(m, f)):
            continue
        out.append(HiddenGroup(name, prod, tuple(f for f in fols if hasattr(m, f)), cons))
    return out


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


# -- importance --------------------------------------------------------------------------------------------------------
def magnitude_scores(model: nn.Module, groups: list[HiddenGroup]) -> list[torch.Tensor]:
    scores = []
    for g in groups:
        _, p, _, c = g.modules(model)
        row = p.weight.detach().flatten(1).norm(dim=1)
        col = c.weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
        scores.append(row * col)
    return scores


def taylor_scores(model: nn.Module, groups: list[HiddenGroup], loader: Iterable,
                  batches: int = 4) -> list[torch.Tensor]:
    """First-order Taylor importance: sum over positions and batches of |a * dL/da| at the consumer's input."""
    acts: dict[int, torch.Tensor] = {}
    scores = [torch.zeros(_width(g.modules(model)[1])) for g in groups]
    handles = []
    for i, g in enumerate(groups):
        _, _, _, c = g.modules(model)

        def hook(mod, args, i=i):
            a = args[0]
            a.retain_grad()
            acts[i] = a
        handles.append(c.register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        for x, y in itertools.islice(loader, batches):
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            for i, g in enumerate(groups):
                a = acts[i]
                ch = -1 if isinstance(g.modules(model)[3], nn.Linear) else 1
                dims = [d for d in range(a.ndim) if d != (ch % a.ndim)]
                scores[i] += (a * a.grad).detach().abs().sum(dims)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    return scores


# -- the plan ----------------------------------------------------------------------------------------------------------
@dataclass
class PrunePlan:
    groups: list[HiddenGroup]
    keep: list[torch.Tensor]  # indices of kept channels per group, sorted

    def widths(self) -> dict[str, int]:
        return {g.path: len(k) for g, k in zip(self.groups, self.keep)}


def plan_pruning(model: nn.Module, ratio: float, *, importance: str = "magnitude", loader: Iterable | None = None,
                 min_keep: float = 0.1, quantum: int = 8) -> PrunePlan:
    """Remove about `ratio` of all MLP hidden channels, the least important first across the whole model (scores
    normalised by their group's mean, so the allocation per layer follows the scores)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1); got {ratio}")
    groups = hidden_groups(model)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no prunable MLP hidden channels")
    if importance == "magnitude":
        scores = magnitude_scores(model, groups)
    elif importance == "taylor":
        if loader is None:
            raise ValueError("Taylor importance needs a loader of (images, labels)")
        scores = taylor_scores(model, groups, loader)
    else:
        raise ValueError(f"importance must be 'magnitude' or 'taylor'; got {importance!r}")
    norm = [s / s.mean().clamp_min(1e-12) for s in scores]
    total = sum(len(s) for s in norm)
    flat = torch.cat(norm)
    n_remove = int(round(ratio * total))
    threshold = flat.kthvalue(n_remove).values.item() if n_remove > 0 else -math.inf
    keep = []
    for s in norm:
        c = len(s)
        k = int((s > threshold).sum())
        k = max(k, math.ceil(min_keep * c), 1)
        k = min(c, max(quantum, int(round(k / quantum)) * quantum)) if quantum > 1 else k
        keep.append(torch.sort(torch.topk(s, k).indices).values)
    return PrunePlan(groups, keep)


# -- masking and slimming ----------------------------------------------------------------------------------------------
@torch.no_grad()
def mask_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Zero the producer rows (weight and bias) of the removed channels, in place: the masked model."""
    for g, keep in zip(plan.groups, plan.keep):
        _, p, _, _ = g.modules(model)
        drop = torch.ones(_width(p), dtype=torch.bool)
        drop[keep] = False
        p.weight[drop] = 0
        if p.bias is not None:
            p.bias[drop] = 0
    return model


def _constant_at_consumer(followers: list[nn.Module], width: int, like: nn.Module) -> torch.Tensor:
    """What the followers make of a zero channel (act(0), GRN's beta, ...), per channel."""
    shape = (1, 2, 2, width) if isinstance(like, nn.Linear) else (1, width, 2, 2)
    x = torch.zeros(shape)
    for f in followers:
        x = f.eval()(x)
    return x[0, 0, 0] if isinstance(like, nn.Linear) else x[0, :, 0, 0]


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


@torch.no_grad()
def slim_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Remove the pruned channels physically, in place; outputs equal those of `mask_(model, plan)`."""
    for g, keep in zip(plan.groups, plan.keep):
        _, p, followers, c = g.modules(model)
        width = _width(p)
        drop = torch.ones(width, dtype=torch.bool)
        drop[keep] = False
        const = _constant_at_consumer(followers, width, c)
        w = c.weight.detach()
        # consumer(x) gains W[:, dropped] @ const[dropped] (a 1x1 conv or linear: a per-output constant)
        wd = w[:, drop]
        extra = (wd.flatten(2).sum(2) if wd.ndim > 2 else wd) @ const[drop]
        if drop.any() and extra.abs().max() > 0:
            if c.bias is None:
                c.bias = nn.Parameter(extra.clone())
            else:
                c.bias += extra
        _index_layer(p, keep, 0)
        _index_layer(c, keep, 1)
        for f in followers:
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
                for name in ("weight", "bias"):
                    t = getattr(f, name)
                    if t is not None:
                        setattr(f, name, nn.Parameter(t.detach()[keep].clone()))
                f.running_mean = f.running_mean[keep].clone()
                f.running_var = f.running_var[keep].clone()
                f.num_features = len(keep)
    return model


# -- the spec: save and rebuild ----------------------------------------------------------------------------------------
def pruning_spec(model: nn.Module, name: str, groups: list[HiddenGroup] | None = None) -> dict[str, Any]:
    """The architecture of a slimmed model beyond its registered name: per group, hidden width, whether the
    consumer has a bias, GRN eps."""
    out = {}
    for g in groups or hidden_groups(model):
        _, p, followers, c = g.modules(model)
        entry: dict[str, Any] = dict(hidden=_width(p), consumer_bias=c.bias is not None)
        grn = [f for f in followers if isinstance(f, GlobalResponseNorm)]
        if grn:
            entry["grn_eps"] = grn[0].eps
        out[g.path] = entry
    num_classes = getattr(model, "num_classes", None)
    return dict(model=name, num_classes=num_classes, in_chans=_in_chans(model), groups=out)


def _in_chans(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


@torch.no_grad()
def apply_spec_(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Give a freshly built model the shapes of the spec (weights are then loaded over it)."""
    groups = {g.path: g for g in hidden_groups(model)}
    for path, entry in spec["groups"].items():
        if path not in groups:
            raise ValueError(f"the spec prunes {path!r}, which {spec['model']} does not have as an MLP group")
        g = groups[path]
        keep = torch.arange(entry["hidden"])
        plan = PrunePlan([g], [keep])
        _, p, followers, c = g.modules(model)
        slim_(model, plan)
        for f in followers:
            if isinstance(f, GlobalResponseNorm) and "grn_eps" in entry:
                f.eps = entry["grn_eps"]
        if entry["consumer_bias"] and c.bias is None:
            c.bias = nn.Parameter(torch.zeros(c.weight.shape[0]))
        elif not entry["consumer_bias"] and c.bias is not None:
            c.bias = None
    return model


def save_pruned(model: nn.Module, spec: dict[str, Any], path: str | Path) -> Path:
    from ..models import save_weights
    return save_weights(model, path, metadata={"convscope_pruning_spec": json.dumps(spec)})


def load_pruned(path: str | Path) -> nn.Module:
    """Rebuild a pruned model from its safetensors file: create_model(name) shaped by the spec, weights strict."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..models import create_model
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "convscope_pruning_spec" not in meta:
        raise ValueError(f"{path} holds no pruning spec (not written by save_pruned)")
    spec = json.loads(meta["convscope_pruning_spec"])
    kwargs = {k: spec[k] for k in ("num_classes", "in_chans") if spec.get(k) is not None}
    # every weight is loaded over the build, so the init is skipped (meta device) unless the model has buffers
    # the state dict does not carry (index tables computed at build time)
    with torch.device("meta"):
        model = create_model(spec["model"], **kwargs)
    saved = model.state_dict().keys()
    if any(n not in saved for n, _ in model.named_buffers()):
        model = create_model(spec["model"], **kwargs)
    else:
        model = model.to_empty(device="cpu")
    model = apply_spec_(model, spec)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def prune(model: nn.Module, ratio: float, **kwargs) -> tuple[nn.Module, PrunePlan]:
    """Plan and slim `model` in place; returns (model, plan)."""
    plan = plan_pruning(model, ratio, **kwargs)
    return slim_(model, plan), plan
