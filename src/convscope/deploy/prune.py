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
* ``"stage"``: the residual-stream channels of each stage, for models laid out stem -> stages (downsample,
  blocks) -> head whose blocks declare ``prune_stream = ((attribute, role), ...)`` (ConvNeXt, InceptionNeXt,
  UniRepLKNet). One group per stage spans the stem's / downsampling conv's rows and the norms after it, per block
  the depthwise conv (every branch of a Dilated Reparam Block), norms, SE, fc1's columns, fc2's rows and the layer
  scale, and the next downsampling norm and conv columns (the head's norm and first Linear for the last stage).
  InceptionNeXt's mixer splits the channels into identity / square / w-band / h-band parts: a channel stays in
  its part, the slimmed mixer gets explicit `split_sizes`, and each conv part keeps at least one channel.

Masking (the "masked model", `mask_`) zeroes every parametric slice that writes a removed unit: the producer's
row and bias, a follower conv's filters and bias, BatchNorm's and GRN's weight and bias; for a head, its rows of
q, k and v (its values are then 0, so the head adds nothing to proj's input). What reaches the consumer from a
removed channel is then a constant (act(0), StarReLU's bias), which slimming folds into the consumer's bias; a
channel-coupled follower (GRN, squeeze-excite) must see an exact 0 there, which the discovery checks (a group
whose activation may be non-zero at 0 before such a follower is skipped). GRN divides by the mean over channels,
so slimming keeps its arithmetic with gamma and eps scaled by C / C'. A masked model and its slimmed form give
equal outputs (tests: 1e-5). A removed stage channel is exactly 0 everywhere in the masked model (its writers,
depthwise filters and BatchNorm affine are zeroed), but a LayerNorm over the channels would still count it in
its mean and variance: the masked model's LayerNorms over a pruned stage are `KeptChannelNorm`s, which take the
statistics over the kept channels only, as the slimmed model's LayerNorms do.

Importance: "magnitude" (per hidden channel, the L2 norm of the producer row times the consumer column; per head,
the norm of its q, k, v rows times that of its proj columns; per stage channel, the norm of all its writers' rows
times that of all its readers' columns) or "taylor" (|activation x gradient| at the readers' inputs, summed over a
few batches, and over a head's head_dim channels). `plan_pruning(model, ratio, scopes=...)` normalises each
group's scores by their mean and, per scope, removes the lowest `ratio` (`head_ratio` for heads, `stage_ratio` for
stage channels, both default `ratio`) of all that scope's units in the model: hidden and stage channels counted one
by one (a grouped conv's units as m channels), heads one by one. It keeps at least `min_keep` of each group (and
one head per attention), and rounds hidden and stage widths to `quantum` (to a common multiple of quantum and m
for grouped convs).

The pruned model is saved as safetensors whose metadata holds the spec (model name and constructor arguments,
classes, input channels, per hidden group its width, consumer bias and GRN eps, per attention its head count, per
stage its width and Inception part sizes); `load_pruned` rebuilds it with `create_model` and the spec (the model
is built, then shrunk to the spec's shapes) and loads the weights strictly.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers.classifier import ClassifierHead
from ..layers.grn import GlobalResponseNorm
from ..layers.mixers.attention import Attention
from ..layers.mixers.inception_dw import InceptionDWConv2d
from ..layers.mixers.sepconv import SepConv
from ..layers.mlp import ConvMlp, GlobalResponseNormMlp, Mlp, MlpHead
from ..layers.norm import LayerNorm2d
from ..layers.se import SqueezeExcite

SCOPES = ("mlp", "heads", "stage")

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
    for f, k in zip(followers, kinds, strict=False):
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


# -- groups ------------------------------------------------------------------------------------------------------------
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


@dataclass
class StageGroup:
    """The residual-stream channels of one stage (scope "stage"): `members` are (path from the model's root,
    role) pairs, role one of "out" (writes the channels: rows), "in" (reads them: columns), "dw" (a module whose
    convs are all depthwise and whose BatchNorms are all over these channels), "norm" (BatchNorm, LayerNorm or
    LayerNorm2d over them), "scale" (a per-channel parameter or LayerScale), "se" (a squeeze-excite over them),
    "split" (an Inception depthwise mixer: identity / square / band parts)."""
    path: str
    members: tuple[tuple[str, str], ...]
    kind = "stage"
    unit = 1

    def size(self, model: nn.Module) -> int:
        return _width(model.get_submodule(next(p for p, r in self.members if r == "out")))

    def parts(self, model: nn.Module) -> list[tuple[int, int, bool]] | None:
        """(offset, size, needs at least one channel) per part of the stage's Inception mixers, or None."""
        for p, r in self.members:
            if r == "split":
                sizes = model.get_submodule(p).split_sizes
                offs = [0] + list(itertools.accumulate(sizes))[:-1]
                return [(o, n, i > 0) for i, (o, n) in enumerate(zip(offs, sizes, strict=False))]
        return None


Group = HiddenGroup | HeadGroup | StageGroup


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
        for f, k in zip(followers, kinds, strict=False):
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


def _is_norm(m: nn.Module) -> bool:
    """Identity, an affine BatchNorm2d, or a LayerNorm over one (channel) dimension, channels-last or NCHW."""
    if isinstance(m, nn.Identity):
        return True
    if type(m) is nn.BatchNorm2d:
        return m.affine
    return isinstance(m, nn.LayerNorm) and type(m).forward in (nn.LayerNorm.forward, LayerNorm2d.forward) and \
        len(m.normalized_shape) == 1


def _role_ok(m: nn.Module | nn.Parameter, role: str, width: int) -> bool:
    if role in ("out", "in"):
        if not isinstance(m, _LAYERS) or (isinstance(m, nn.Conv2d) and m.groups != 1):
            return False
        return (_width(m) if role == "out" else m.weight.shape[1]) == width
    if role == "dw":
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
        acts = [a for a in m.modules() if not list(a.children()) and not isinstance(a, (nn.Conv2d, nn.BatchNorm2d))]
        return bool(convs) and all(c.in_channels == c.out_channels == c.groups == width for c in convs) and \
            all(b.num_features == width and b.affine for b in bns) and all(_maps_zero_to_zero(a) for a in acts)
    if role == "norm":
        return _is_norm(m) and (isinstance(m, nn.Identity) or
                                (m.num_features if isinstance(m, nn.BatchNorm2d) else m.normalized_shape[0]) == width)
    if role == "scale":
        t = m.scale if hasattr(m, "scale") and isinstance(m, nn.Module) else m
        return isinstance(t, torch.Tensor) and t.shape == (width,)
    if role == "se":
        return isinstance(m, SqueezeExcite) and m.fc1.in_channels == m.fc2.out_channels == width
    if role == "split":
        return isinstance(m, InceptionDWConv2d) and sum(m.split_sizes) == width
    return False


def _resolve(model: nn.Module, path: str):
    parent, _, leaf = path.rpartition(".")
    try:
        owner = model.get_submodule(parent) if parent else model
    except AttributeError:
        return None
    return getattr(owner, leaf, None)


def _opener(seq: nn.Module, path: str, is_stem: bool) -> tuple[list, list, list] | None:
    """Split a stem / downsampling nn.Sequential at its last plain conv: (members of the previous stage, the conv,
    members of this stage); None when it is not such a sequence."""
    if not isinstance(seq, nn.Sequential):
        return None
    convs = [i for i, m in enumerate(seq) if isinstance(m, nn.Conv2d) and m.groups == 1]
    if not convs:
        return None
    last = convs[-1]
    before, after = [], []
    for i, m in enumerate(seq):
        if i == last:
            continue
        if i < last and is_stem:
            continue  # the stem's inner layers have their own widths, left alone
        if _is_norm(m):
            (before if i < last else after).append((f"{path}.{i}", "norm"))
        elif not (_elementwise(m) and _maps_zero_to_zero(m)):
            return None
    return before, [(f"{path}.{last}", "out")], after


def stage_groups(model: nn.Module) -> list[StageGroup]:
    """The residual-stream channels of each stage, for models laid out stem -> stages (downsample, blocks) ->
    head whose blocks declare `prune_stream` ((attribute, role) pairs); [] for the others (meta device is fine)."""
    stages, head = getattr(model, "stages", None), getattr(model, "head", None)
    if not isinstance(stages, nn.Sequential) or not hasattr(model, "stem") or \
            not isinstance(getattr(model, "norm_pre", nn.Identity()), nn.Identity):
        return []
    members: list[list[tuple[str, str]]] = []
    for i, stage in enumerate(stages):
        blocks = getattr(stage, "blocks", None)
        if blocks is None or not all(hasattr(b, "prune_stream") for b in blocks):
            return []
        if getattr(stage, "tokens", False):
            return []
        split = _opener(model.stem if i == 0 else stage.downsample, "stem" if i == 0 else f"stages.{i}.downsample",
                        i == 0)
        if split is None:
            return []
        before, conv, after = split
        if i > 0:
            members[-1] += before + [(conv[0][0], "in")]
        members.append(conv + after)
        for j, b in enumerate(blocks):
            for name, role in b.prune_stream:
                t = _resolve(b, name)
                if t is None or isinstance(t, nn.Identity):
                    continue
                members[-1].append((f"stages.{i}.blocks.{j}.{name}", role))
    if isinstance(head, ClassifierHead):
        if head.norm_first:
            return []
        if not isinstance(head.norm, nn.Identity):
            members[-1].append(("head.norm", "norm"))
        fc = head.fc
        if isinstance(fc, MlpHead):
            members[-1].append(("head.fc.fc1", "in"))
        elif isinstance(fc, nn.Linear):
            members[-1].append(("head.fc", "in"))
        elif not isinstance(fc, nn.Identity):
            return []
    elif isinstance(head, MlpHead):
        members[-1].append(("head.fc1", "in"))
    else:
        return []
    out = []
    for i, mem in enumerate(members):
        g = StageGroup(f"stages.{i}", tuple(mem))
        width = g.size(model)
        if not all(_role_ok(_resolve(model, p), r, width) for p, r in mem):
            return []
        out.append(g)
    return out


def prunable_groups(model: nn.Module, scopes: Iterable[str] = ("mlp",)) -> list[Group]:
    scopes = _check_scopes(scopes)
    out: list[Group] = []
    if "mlp" in scopes:
        out += hidden_groups(model)
    if "heads" in scopes:
        out += head_groups(model)
    if "stage" in scopes:
        out += stage_groups(model)
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


# -- importance --------------------------------------------------------------------------------------------------------
def magnitude_scores(model: nn.Module, groups: list[Group]) -> list[torch.Tensor]:
    """Per unit of each group (hidden channel, head): producer rows' norm times consumer columns' norm."""
    scores = []
    for g in groups:
        if isinstance(g, StageGroup):
            width = g.size(model)
            w, r = torch.zeros(width), torch.zeros(width)
            for path, role in g.members:
                t = _resolve(model, path)
                if role == "out":
                    w += t.weight.detach().flatten(1).pow(2).sum(1)
                elif role == "in":
                    r += t.weight.detach().transpose(0, 1).flatten(1).pow(2).sum(1)
            scores.append(w.sqrt() * r.sqrt())
            continue
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


def _readers(model: nn.Module, g: Group) -> list[nn.Module]:
    """The layers whose input holds the group's units: a hidden group's consumer, an attention's proj, every
    layer reading a stage's channels."""
    if isinstance(g, StageGroup):
        return [_resolve(model, p) for p, r in g.members if r == "in"]
    return [g.modules(model)[2] if isinstance(g, HeadGroup) else g.modules(model)[3]]


def taylor_scores(model: nn.Module, groups: list[Group], loader: Iterable,
                  batches: int = 4) -> list[torch.Tensor]:
    """First-order Taylor importance: sum over positions and batches of |a * dL/da| at the readers' input (for a
    head: proj's input, summed over the head's channels; for a stage: every layer reading its channels)."""
    acts: dict[tuple[int, int], torch.Tensor] = {}
    readers = [_readers(model, g) for g in groups]
    scores = [torch.zeros(g.size(model) if isinstance(g, StageGroup) else rs[0].weight.shape[1])
              for g, rs in zip(groups, readers, strict=False)]
    handles = []
    for i, rs in enumerate(readers):
        for j, layer in enumerate(rs):
            def hook(mod, args, key=(i, j)):
                a = args[0]
                if a.requires_grad:
                    a.retain_grad()
                acts[key] = a
            handles.append(layer.register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        for x, y in itertools.islice(loader, batches):
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            for i, rs in enumerate(readers):
                for j, layer in enumerate(rs):
                    a = acts[(i, j)]
                    if a.grad is None:
                        continue
                    ch = (-1 if isinstance(layer, nn.Linear) else 1) % a.ndim
                    scores[i] += (a * a.grad).detach().abs().sum([d for d in range(a.ndim) if d != ch])
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    return [s.view(g.size(model), -1).sum(1) if isinstance(g, HeadGroup) else s
            for g, s in zip(groups, scores, strict=True)]


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
    scopes = _check_scopes(scopes)
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


# -- masking and slimming ----------------------------------------------------------------------------------------------
def _dropped(width: int, keep: torch.Tensor) -> torch.Tensor:
    drop = torch.ones(width, dtype=torch.bool)
    drop[keep] = False
    return drop


@torch.no_grad()
def mask_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Zero, in place, every parametric slice that writes a removed unit: the masked model."""
    for g, keep in zip(plan.groups, plan.keep, strict=False):
        if isinstance(g, StageGroup):
            _mask_stage(model, g, keep)
            continue
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


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _zero_(layer: nn.Module, drop: torch.Tensor) -> None:
    layer.weight[drop] = 0
    if layer.bias is not None:
        layer.bias[drop] = 0


@torch.no_grad()
def _mask_stage(model: nn.Module, g: StageGroup, keep: torch.Tensor) -> None:
    """Removed stage channels become exactly 0 everywhere: their writers (rows, depthwise filters, BatchNorm
    affine, Inception parts) are zeroed, LayerNorms take statistics over the kept channels."""
    drop = _dropped(g.size(model), keep)
    for path, role in g.members:
        t = _resolve(model, path)
        if role == "out":
            _zero_(t, drop)
        elif role == "dw":
            for m in t.modules():
                if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                    _zero_(m, drop)
        elif role == "norm" and isinstance(t, nn.BatchNorm2d):
            _zero_(t, drop)
        elif role == "norm" and isinstance(t, nn.LayerNorm):
            _set_module(model, path, KeptChannelNorm(t, keep))
        elif role == "split":
            for (off, n, _), conv in zip(g.parts(model), (None, t.dwconv_hw, t.dwconv_w, t.dwconv_h), strict=False):
                if conv is not None:
                    _zero_(conv, drop[off:off + n])


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
def _slim_stage(model: nn.Module, g: StageGroup, keep: torch.Tensor) -> None:
    width = g.size(model)
    parts = g.parts(model)
    for path, role in g.members:
        t = _resolve(model, path)
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
                _set_module(model, path, t)
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


@torch.no_grad()
def slim_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Remove the pruned units physically, in place; outputs equal those of `mask_(model, plan)`."""
    for g, keep in zip(plan.groups, plan.keep, strict=False):
        if isinstance(g, HeadGroup):
            _slim_heads(model, g, keep)
        elif isinstance(g, StageGroup):
            _slim_stage(model, g, keep)
        else:
            _slim_hidden(model, g, keep)
    return model


# -- the spec: save and rebuild ----------------------------------------------------------------------------------------
def pruning_spec(model: nn.Module, name: str, groups: list[Group] | None = None,
                 model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The architecture of a slimmed model beyond its registered name (and the constructor arguments it was built
    with, `model_kwargs`, e.g. a checkpoint's): per hidden group, its width, whether the consumer has a bias, GRN
    eps; per attention, its head count; per stage, its width and Inception part sizes."""
    out, heads, stages = {}, {}, {}
    for g in groups or prunable_groups(model, SCOPES):
        if isinstance(g, HeadGroup):
            heads[g.path] = dict(num_heads=g.size(model))
            continue
        if isinstance(g, StageGroup):
            parts = g.parts(model)
            stages[g.path] = dict(width=g.size(model), **({"parts": [n for _, n, _ in parts]} if parts else {}))
            continue
        _, p, followers, c = g.modules(model)
        entry: dict[str, Any] = dict(hidden=_width(p), consumer_bias=c.bias is not None)
        grn = [f for f in followers if isinstance(f, GlobalResponseNorm)]
        if grn:
            entry["grn_eps"] = grn[0].eps
        out[g.path] = entry
    num_classes = getattr(model, "num_classes", None)
    return dict(model=name, model_kwargs=dict(model_kwargs or {}), num_classes=num_classes,
                in_chans=_in_chans(model), groups=out, heads=heads, stages=stages)


def _in_chans(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


@torch.no_grad()
def apply_spec_(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Give a freshly built model the shapes of the spec (weights are then loaded over it)."""
    groups = {g.path: g for g in hidden_groups(model)}
    stage = {g.path: g for g in stage_groups(model)} if spec.get("stages") else {}
    for path, entry in spec.get("stages", {}).items():
        if path not in stage:
            raise ValueError(f"the spec prunes the channels of {path!r}, which {spec['model']} does not have as a "
                             f"prunable stage")
        g = stage[path]
        parts = g.parts(model)
        if parts:  # the first n channels of each part
            keep = torch.cat([off + torch.arange(n) for (off, _, _), n in zip(parts, entry["parts"], strict=False)])
        else:
            keep = torch.arange(entry["width"])
        _slim_stage(model, g, keep)
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


def is_pruned(path: str | Path) -> dict[str, Any] | None:
    """The pruning spec of a safetensors file written by `save_pruned`, or None (any other file or path)."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".safetensors"):
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # not a safetensors file: the caller's loader says so
        return None
    spec = meta.get("convscope_pruning_spec")
    return json.loads(spec) if spec else None


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
    kwargs = dict(spec.get("model_kwargs") or {})
    kwargs.update({k: spec[k] for k in ("num_classes", "in_chans") if spec.get(k) is not None})
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
