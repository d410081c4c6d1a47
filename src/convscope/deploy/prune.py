"""Structured pruning with physical removal: the pruned model really is smaller.

Three scopes, each a pool of prunable units ranked globally on its own:

* ``"mlp"``: hidden channels. A *hidden group* is producer -> per-channel followers -> consumer: an MLP's fc1
  (Linear or 1x1 conv), the layers that act on its hidden channels one by one, and fc2. Followers may be
  activations, dropout, BatchNorm, GRN, a squeeze-excite over the hidden channels, and depthwise or grouped
  convs (an inverted separable conv / MBConv: 1x1 expand -> norm/act -> depthwise kxk -> norm/act [-> SE] -> 1x1
  project). A depthwise conv loses the channel; a grouped conv with m > 1 channels per group loses whole groups,
  so such a group's unit is m channels. Groups are found through the shared layers (`Mlp`, `ConvMlp`,
  `GlobalResponseNormMlp`, `SepConv`) and through a declared hook: a block that writes its MLP inline sets
  ``prune_hidden = (producer, (followers...), consumer)`` with (dotted) attribute names (UniRepLKNet, MaxViT's and
  MOAT's MBConv). A norm over the hidden channels together (an MLP head's LayerNorm) makes a group unprunable.
* ``"heads"``: whole heads of multi-head attention whose q, k, v come from one Linear laid out (3, heads,
  head_dim) and whose output goes through one Linear `proj`: the shared `Attention` (CAFormer, ConViT, CrossViT)
  and modules declaring ``prune_heads = (qkv, proj, (per-head parameters or Linear layers...))``
  (`RelPosWindowAttention`'s bias table, `LengthScaledAttention`'s temperature, query embedding and the last layer
  of its position-bias MLP). A head loses its rows in q, k and v and its columns in proj; head_dim is unchanged,
  so the softmax scale (1 / sqrt(head_dim), or the module's own) is unchanged too.

Masking (the "masked model", `mask_`) zeroes every parametric slice that writes a removed unit: the producer's
row and bias, a follower conv's filters and bias, BatchNorm's and GRN's weight and bias; for a head, its rows of
q, k and v (its values are then 0, so the head adds nothing to proj's input). What reaches the consumer from a
removed channel is then a constant (act(0), StarReLU's bias), which slimming folds into the consumer's bias; a
channel-coupled follower (GRN, squeeze-excite) must see an exact 0 there, which the discovery checks (a group
whose activation may be non-zero at 0 before such a follower is skipped). GRN divides by the mean over channels,
so slimming keeps its arithmetic with gamma and eps scaled by C / C'. A masked model and its slimmed form give
equal outputs (tests: 1e-5).

Importance: "magnitude" (per hidden channel, the L2 norm of the producer row times the consumer column; per head,
the norm of its q, k, v rows times that of its proj columns) or "taylor" (|activation x gradient| at the consumer's
input, summed over a few batches, and over a head's head_dim channels). `plan_pruning(model, ratio, scopes=...)`
normalises each group's scores by their mean and, per scope, removes the lowest `ratio` (`head_ratio` for heads,
default `ratio`) of all that scope's units in the model: hidden channels counted one by one (a grouped conv's
units as m channels), heads one by one. It keeps at least `min_keep` of each group (and one head per attention),
and rounds hidden widths to `quantum` (to a common multiple of quantum and m for grouped convs).

The pruned model is saved as safetensors whose metadata holds the spec (model name, classes, input channels, per
hidden group its width, consumer bias and GRN eps, per attention its head count); `load_pruned` rebuilds it with
`create_model` and the spec (the model is built, then shrunk to the spec's shapes) and loads the weights strictly.
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
from ..layers.mixers.attention import Attention
from ..layers.mixers.sepconv import SepConv
from ..layers.mlp import ConvMlp, GlobalResponseNormMlp, Mlp
from ..layers.se import SqueezeExcite

SCOPES = ("mlp", "heads")

_RULES: dict[type, tuple[str, tuple[str, ...], str]] = {
    Mlp: ("fc1", ("act", "drop"), "fc2"),
    ConvMlp: ("fc1", ("norm", "act", "drop"), "fc2"),
    GlobalResponseNormMlp: ("fc1", ("act", "drop", "grn"), "fc2"),
    SepConv: ("pwconv1", ("act1", "dwconv", "act2"), "pwconv2"),
}
_HEAD_RULES: dict[type, tuple[str, str, tuple[str, ...]]] = {
    Attention: ("qkv", "proj", ()),
}
_LAYERS = (nn.Linear, nn.Conv2d)
_ELEMENTWISE = (nn.Identity, nn.Dropout, nn.GELU, nn.ReLU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Tanh)


def _rule(m: nn.Module) -> tuple[str, tuple[str, ...], str] | None:
    declared = getattr(m, "prune_hidden", None)
    if declared is not None:
        return declared
    return _RULES.get(type(m))


def _get(m: nn.Module, name: str) -> nn.Module | None:
    try:
        return m.get_submodule(name)
    except AttributeError:
        return None


def _elementwise(f: nn.Module) -> bool:
    """Parameter-free activations, or activations with scalar parameters (StarReLU's scale and bias)."""
    if isinstance(f, _ELEMENTWISE):
        return True
    if isinstance(f, (nn.BatchNorm2d, GlobalResponseNorm, SqueezeExcite, nn.LayerNorm, nn.GroupNorm) + _LAYERS):
        return False
    return all(p.numel() == 1 for p in f.parameters(recurse=True)) and not list(f.buffers())


def _follower_kind(f: nn.Module, width: int) -> str | None:
    """How a follower acts on the hidden channels: "conv" (depthwise / grouped, writes them), "bn" (an affine
    BatchNorm, maybe with an elementwise activation inside), "grn", "se" (channel-coupled, need a removed
    channel to be exactly 0), "act" (elementwise); None: not per channel, the group is not prunable."""
    if isinstance(f, nn.Conv2d):
        ok = f.in_channels == f.out_channels == width and f.groups > 1 and width % f.groups == 0
        return "conv" if ok else None
    if isinstance(f, nn.BatchNorm2d):
        inner_ok = all(_elementwise(c) for c in f.children())
        return "bn" if f.affine and inner_ok else None
    if isinstance(f, GlobalResponseNorm):
        return "grn"
    if isinstance(f, SqueezeExcite):
        return "se" if f.fc1.in_channels == width and f.fc2.out_channels == width else None
    return "act" if _elementwise(f) else None


def _zero_reaches(followers: list[nn.Module], kinds: list[str]) -> bool:
    """Whether every channel-coupled follower sees an exact 0 from a masked channel (decided without values:
    a parametrised activation may be non-zero at 0)."""
    zero = True
    for f, k in zip(followers, kinds):
        if k in ("conv", "bn"):
            zero = True
            for c in f.children():  # BatchNormAct2d's activation
                zero = zero and _maps_zero_to_zero(c)
        elif k in ("grn", "se"):
            if not zero:
                return False
        else:
            zero = zero and _maps_zero_to_zero(f)
    return True


def _maps_zero_to_zero(f: nn.Module) -> bool:
    if isinstance(f, (nn.Identity, nn.Dropout)):
        return True
    if any(True for _ in f.parameters()):
        return False  # StarReLU: s * relu(0)^2 + b, not known to be 0
    with torch.no_grad():
        return bool(f(torch.zeros(1)).abs().max() == 0)


def _apply_elementwise(f: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An elementwise follower on a per-channel vector, as in eval mode (dropout is the identity)."""
    return x if isinstance(f, (nn.Identity, nn.Dropout)) else f(x)


# -- groups -------------------------------------------------------------------------------------------------------------
@dataclass
class HiddenGroup:
    """Hidden channels of one MLP-like group (scope "mlp"); `unit`: channels removed together (a grouped conv's
    group size; 1 for depthwise)."""
    path: str
    producer: str
    followers: tuple[str, ...]
    consumer: str
    unit: int = 1
    kind = "mlp"

    def modules(self, model: nn.Module):
        m = model.get_submodule(self.path)
        return m, m.get_submodule(self.producer), [m.get_submodule(f) for f in self.followers], \
            m.get_submodule(self.consumer)

    def size(self, model: nn.Module) -> int:
        return _width(self.modules(model)[1])


@dataclass
class HeadGroup:
    """The heads of one multi-head attention (scope "heads")."""
    path: str
    qkv: str
    proj: str
    per_head: tuple[str, ...] = ()
    kind = "heads"
    unit = 1

    def modules(self, model: nn.Module):
        m = model.get_submodule(self.path)
        return m, m.get_submodule(self.qkv), m.get_submodule(self.proj)

    def size(self, model: nn.Module) -> int:
        return model.get_submodule(self.path).num_heads


Group = HiddenGroup | HeadGroup


def hidden_groups(model: nn.Module) -> list[HiddenGroup]:
    """Every prunable MLP-like hidden group of `model` (works on the meta device)."""
    out = []
    for name, m in model.named_modules():
        rule = _rule(m)
        if rule is None:
            continue
        prod, fols, cons = rule
        p, c = _get(m, prod), _get(m, cons)
        if not (isinstance(p, _LAYERS) and isinstance(c, _LAYERS)):
            continue
        if isinstance(p, nn.Conv2d) and (p.kernel_size != (1, 1) or p.groups != 1):
            continue
        if isinstance(c, nn.Conv2d) and (c.kernel_size != (1, 1) or c.groups != 1):
            continue
        fols = tuple(f for f in fols if _get(m, f) is not None)
        followers = [m.get_submodule(f) for f in fols]
        width = _width(p)
        kinds = [_follower_kind(f, width) for f in followers]
        if None in kinds or not _zero_reaches(followers, kinds):
            continue
        unit = 1
        for f, k in zip(followers, kinds):
            if k == "conv":
                unit = math.lcm(unit, width // f.groups)
        out.append(HiddenGroup(name, prod, fols, cons, unit))
    return out


def _head_rule(m: nn.Module) -> tuple[str, str, tuple[str, ...]] | None:
    declared = getattr(m, "prune_heads", None)
    if declared is not None:
        return declared
    return _HEAD_RULES.get(type(m))


def head_groups(model: nn.Module) -> list[HeadGroup]:
    """Every multi-head attention of `model` whose heads can be pruned (works on the meta device)."""
    out = []
    for name, m in model.named_modules():
        rule = _head_rule(m)
        if rule is None:
            continue
        qkv_name, proj_name, per_head = rule
        qkv, proj = _get(m, qkv_name), _get(m, proj_name)
        h, d = getattr(m, "num_heads", None), getattr(m, "head_dim", None)
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and h and d):
            continue
        if qkv.out_features != 3 * h * d or proj.in_features != h * d:
            continue
        out.append(HeadGroup(name, qkv_name, proj_name, tuple(per_head)))
    return out


def prunable_groups(model: nn.Module, scopes: Iterable[str] = ("mlp",)) -> list[Group]:
    scopes = _check_scopes(scopes)
    out: list[Group] = []
    if "mlp" in scopes:
        out += hidden_groups(model)
    if "heads" in scopes:
        out += head_groups(model)
    return out


def _check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {SCOPES}; got {scopes}")
    return scopes


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _head_rows(keep: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """qkv output rows of the kept heads, for the (3, heads, head_dim) layout."""
    part = (keep[:, None] * head_dim + torch.arange(head_dim)).flatten()
    return torch.cat([s * heads * head_dim + part for s in range(3)])


def _head_cols(keep: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (keep[:, None] * head_dim + torch.arange(head_dim)).flatten()


# -- importance ---------------------------------------------------------------------------------------------------------
def magnitude_scores(model: nn.Module, groups: list[Group]) -> list[torch.Tensor]:
    """Per unit of each group (hidden channel, head): producer rows' norm times consumer columns' norm."""
    scores = []
    for g in groups:
        if isinstance(g, HeadGroup):
            m, qkv, proj = g.modules(model)
            h, d = m.num_heads, m.head_dim
            rows = qkv.weight.detach().view(3, h, d, -1).permute(1, 0, 2, 3).flatten(1).norm(dim=1)
            cols = proj.weight.detach().view(-1, h, d).permute(1, 0, 2).flatten(1).norm(dim=1)
            scores.append(rows * cols)
            continue
        _, p, _, c = g.modules(model)
        row = p.weight.detach().flatten(1).norm(dim=1)
        col = c.weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
        scores.append(row * col)
    return scores


def _consumer(model: nn.Module, g: Group) -> nn.Module:
    return g.modules(model)[2] if isinstance(g, HeadGroup) else g.modules(model)[3]


def taylor_scores(model: nn.Module, groups: list[Group], loader: Iterable,
                  batches: int = 4) -> list[torch.Tensor]:
    """First-order Taylor importance: sum over positions and batches of |a * dL/da| at the consumer's input (for a
    head: proj's input, summed over the head's channels)."""
    acts: dict[int, torch.Tensor] = {}
    width = [_consumer(model, g).weight.shape[1] for g in groups]
    scores = [torch.zeros(w) for w in width]
    handles = []
    for i, g in enumerate(groups):
        def hook(mod, args, i=i):
            a = args[0]
            a.retain_grad()
            acts[i] = a
        handles.append(_consumer(model, g).register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        for x, y in itertools.islice(loader, batches):
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            for i, g in enumerate(groups):
                a = acts[i]
                ch = -1 if isinstance(_consumer(model, g), nn.Linear) else 1
                dims = [d for d in range(a.ndim) if d != (ch % a.ndim)]
                scores[i] += (a * a.grad).detach().abs().sum(dims)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    return [s.view(g.size(model), -1).sum(1) if isinstance(g, HeadGroup) else s for g, s in zip(groups, scores)]


# -- the plan -----------------------------------------------------------------------------------------------------------
@dataclass
class PrunePlan:
    groups: list[Group]
    keep: list[torch.Tensor]  # per group, sorted indices of the kept hidden channels / heads

    def widths(self) -> dict[str, int]:
        return {g.path: len(k) for g, k in zip(self.groups, self.keep)}


def plan_pruning(model: nn.Module, ratio: float, *, scopes: Iterable[str] = ("mlp",), head_ratio: float | None = None,
                 importance: str = "magnitude", loader: Iterable | None = None, min_keep: float = 0.1,
                 quantum: int = 8) -> PrunePlan:
    """Remove about `ratio` of all hidden channels (scope "mlp") and `head_ratio` (default `ratio`) of all heads
    (scope "heads"), the least important first across the whole model (scores normalised by their group's mean, so
    the allocation per layer follows the scores)."""
    scopes = _check_scopes(scopes)
    head_ratio = ratio if head_ratio is None else head_ratio
    for what, r in (("ratio", ratio), ("head_ratio", head_ratio)):
        if not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ValueError(f"{what} must be in [0, 1); got {r!r}")
    if not 0 < min_keep <= 1:
        raise ValueError(f"min_keep must be in (0, 1]; got {min_keep}")
    if not isinstance(quantum, int) or quantum < 1:
        raise ValueError(f"quantum must be a positive integer; got {quantum!r}")
    groups = prunable_groups(model, scopes)
    for s in scopes:
        if not any(g.kind == s for g in groups):
            what = {"mlp": "MLP hidden channels", "heads": "attention heads"}[s]
            raise ValueError(f"{type(model).__name__} has no prunable {what} (scope {s!r})")
    if importance == "magnitude":
        scores = magnitude_scores(model, groups)
    elif importance == "taylor":
        if loader is None:
            raise ValueError("Taylor importance needs a loader of (images, labels)")
        scores = taylor_scores(model, groups, loader)
    else:
        raise ValueError(f"importance must be 'magnitude' or 'taylor'; got {importance!r}")
    keep: list[torch.Tensor | None] = [None] * len(groups)
    for scope in scopes:
        idx = [i for i, g in enumerate(groups) if g.kind == scope]
        r = head_ratio if scope == "heads" else ratio
        for i, k in zip(idx, _allocate([groups[i] for i in idx], [scores[i] for i in idx], r, min_keep,
                                       quantum if scope == "mlp" else 1)):
            keep[i] = k
    return PrunePlan(groups, keep)


def _allocate(groups: list[Group], scores: list[torch.Tensor], ratio: float, min_keep: float,
              quantum: int) -> list[torch.Tensor]:
    """Kept indices per group: units ranked globally by score / group mean; a unit of m channels counts m."""
    units = []
    for g, s in zip(groups, scores):
        u = g.unit
        us = s.view(-1, u).mean(1)
        units.append(us / us.mean().clamp_min(1e-12))
    flat = torch.cat([us.repeat_interleave(g.unit) for g, us in zip(groups, units)])
    n_remove = int(round(ratio * len(flat)))
    threshold = flat.kthvalue(n_remove).values.item() if n_remove > 0 else -math.inf
    keep = []
    for g, us in zip(groups, units):
        n, u = len(us), g.unit
        k = int((us > threshold).sum())
        k = max(k, math.ceil(min_keep * n), 1)
        q = math.lcm(quantum, u) // u  # in units
        if q > 1:
            k = min(n, max(q, int(round(k / q)) * q))
        kept_units = torch.sort(torch.topk(us, k).indices).values
        keep.append((kept_units[:, None] * u + torch.arange(u)).flatten())
    return keep


# -- masking and slimming -----------------------------------------------------------------------------------------------
def _dropped(width: int, keep: torch.Tensor) -> torch.Tensor:
    drop = torch.ones(width, dtype=torch.bool)
    drop[keep] = False
    return drop


@torch.no_grad()
def mask_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Zero, in place, every parametric slice that writes a removed unit: the masked model."""
    for g, keep in zip(plan.groups, plan.keep):
        if isinstance(g, HeadGroup):
            m, qkv, _ = g.modules(model)
            rows = _dropped(qkv.out_features, _head_rows(keep, m.num_heads, m.head_dim))
            qkv.weight[rows] = 0
            if qkv.bias is not None:
                qkv.bias[rows] = 0
            continue
        _, p, followers, _ = g.modules(model)
        drop = _dropped(_width(p), keep)
        for layer in [p] + [f for f in followers if isinstance(f, (nn.Conv2d, nn.BatchNorm2d, GlobalResponseNorm))]:
            layer.weight[drop] = 0
            if layer.bias is not None:
                layer.bias[drop] = 0
    return model


def _constant_at_consumer(followers: list[nn.Module], width: int) -> torch.Tensor:
    """What the followers of a masked group make of a removed channel (act(0), StarReLU's bias), per channel."""
    x = torch.zeros(width)
    for f in followers:
        kind = _follower_kind(f, width)
        if kind in ("conv", "bn", "grn", "se"):
            x = torch.zeros(width)  # masked writers give 0; GRN and SE were checked to get 0 and give 0
            if kind == "bn":
                for c in f.children():
                    x = _apply_elementwise(c, x)
        else:
            x = _apply_elementwise(f, x)
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
def _slim_heads(model: nn.Module, g: HeadGroup, keep: torch.Tensor) -> None:
    m, qkv, proj = g.modules(model)
    h, d = m.num_heads, m.head_dim
    _index_layer(qkv, _head_rows(keep, h, d), 0)
    _index_layer(proj, _head_cols(keep, d), 1)
    for name in g.per_head:
        _index_param(m, name, keep)
    m.num_heads = len(keep)
    if hasattr(m, "attn_dim"):
        m.attn_dim = len(keep) * d


@torch.no_grad()
def _slim_hidden(model: nn.Module, g: HiddenGroup, keep: torch.Tensor) -> None:
    _, p, followers, c = g.modules(model)
    width = _width(p)
    drop = _dropped(width, keep)
    const = _constant_at_consumer(followers, width)
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
            for name in ("weight", "bias"):
                t = getattr(f, name)
                if t is not None:
                    setattr(f, name, nn.Parameter(t.detach()[keep].clone()))
            f.running_mean = f.running_mean[keep].clone()
            f.running_var = f.running_var[keep].clone()
            f.num_features = len(keep)
        elif isinstance(f, nn.Conv2d):
            per_group = width // f.groups
            _index_layer(f, keep, 0)
            f.in_channels = len(keep)
            f.groups = len(keep) // per_group
        elif isinstance(f, SqueezeExcite):
            _index_layer(f.fc1, keep, 1)
            _index_layer(f.fc2, keep, 0)


@torch.no_grad()
def slim_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Remove the pruned units physically, in place; outputs equal those of `mask_(model, plan)`."""
    for g, keep in zip(plan.groups, plan.keep):
        if isinstance(g, HeadGroup):
            _slim_heads(model, g, keep)
        else:
            _slim_hidden(model, g, keep)
    return model


# -- the spec: save and rebuild -----------------------------------------------------------------------------------------
def pruning_spec(model: nn.Module, name: str, groups: list[Group] | None = None) -> dict[str, Any]:
    """The architecture of a slimmed model beyond its registered name: per hidden group, its width, whether the
    consumer has a bias, GRN eps; per attention, its head count."""
    out, heads = {}, {}
    for g in groups or prunable_groups(model, SCOPES):
        if isinstance(g, HeadGroup):
            heads[g.path] = dict(num_heads=g.size(model))
            continue
        _, p, followers, c = g.modules(model)
        entry: dict[str, Any] = dict(hidden=_width(p), consumer_bias=c.bias is not None)
        grn = [f for f in followers if isinstance(f, GlobalResponseNorm)]
        if grn:
            entry["grn_eps"] = grn[0].eps
        out[g.path] = entry
    num_classes = getattr(model, "num_classes", None)
    return dict(model=name, num_classes=num_classes, in_chans=_in_chans(model), groups=out, heads=heads)


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
        _slim_hidden(model, g, torch.arange(entry["hidden"]))
        _, p, followers, c = g.modules(model)
        for f in followers:
            if isinstance(f, GlobalResponseNorm) and "grn_eps" in entry:
                f.eps = entry["grn_eps"]
        if entry["consumer_bias"] and c.bias is None:
            c.bias = nn.Parameter(torch.zeros(c.weight.shape[0]))
        elif not entry["consumer_bias"] and c.bias is not None:
            c.bias = None
    attn = {g.path: g for g in head_groups(model)}
    for path, entry in spec.get("heads", {}).items():
        if path not in attn:
            raise ValueError(f"the spec prunes heads of {path!r}, which {spec['model']} does not have as an "
                             f"attention")
        _slim_heads(model, attn[path], torch.arange(entry["num_heads"]))
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
