"""Prunable groups of a model, found from the shared layers and the blocks' own declarations (`prune_hidden`,
`prune_heads`, `prune_stream`): MLP hidden channels (scope "mlp"), attention heads ("heads") and the
residual-stream channels of each stage ("stage"). See `convscope.deploy.prune` for what each scope removes; the
discovery lives here, below train/ and deploy/, because rebuilding a pruned model from its spec needs it.
Everything here works on the meta device.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ...layers.classifier import ClassifierHead
from ...layers.grn import GlobalResponseNorm
from ...layers.mixers.attention import Attention
from ...layers.mixers.inception_dw import InceptionDWConv2d
from ...layers.mixers.sepconv import SepConv
from ...layers.mlp import ConvMlp, GlobalResponseNormMlp, Mlp, MlpHead
from ...layers.norm import LayerNorm2d
from ...layers.se import SqueezeExcite

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


def follower_kind(f: nn.Module, width: int) -> str | None:
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


def apply_elementwise(f: nn.Module, x: torch.Tensor) -> torch.Tensor:
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
        return layer_width(self.modules(model)[1])


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
        return layer_width(model.get_submodule(next(p for p, r in self.members if r == "out")))

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
        width = layer_width(p)
        kinds = [follower_kind(f, width) for f in followers]
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
        return (layer_width(m) if role == "out" else m.weight.shape[1]) == width
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


def resolve_member(model: nn.Module, path: str):
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
                t = resolve_member(b, name)
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
        if not all(_role_ok(resolve_member(model, p), r, width) for p, r in mem):
            return []
        out.append(g)
    return out


def prunable_groups(model: nn.Module, scopes: Iterable[str] = ("mlp",)) -> list[Group]:
    scopes = check_scopes(scopes)
    out: list[Group] = []
    if "mlp" in scopes:
        out += hidden_groups(model)
    if "heads" in scopes:
        out += head_groups(model)
    if "stage" in scopes:
        out += stage_groups(model)
    return out


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {SCOPES}; got {scopes}")
    return scopes


def layer_width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def head_rows(keep: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """qkv output rows of the kept heads, for the (3, heads, head_dim) layout."""
    part = (keep[:, None] * head_dim + torch.arange(head_dim)).flatten()
    return torch.cat([s * heads * head_dim + part for s in range(3)])


def head_cols(keep: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (keep[:, None] * head_dim + torch.arange(head_dim)).flatten()


