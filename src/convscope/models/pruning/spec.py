"""A pruned model's architecture as data: `pruning_spec` writes it down, `check_pruning_spec` validates it (types,
ranges) before anything is built, `apply_spec_` gives a freshly built model those shapes (every width checked
against the unpruned one) so that the pruned weights load over it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...layers.grn import GlobalResponseNorm
from .groups import (
    SCOPES,
    Group,
    HeadGroup,
    StageGroup,
    head_groups,
    hidden_groups,
    layer_width,
    prunable_groups,
    stage_groups,
)
from .surgery import slim_heads_, slim_hidden_, slim_stage_

PRUNING_KEY = "convscope_pruning_spec"   # the safetensors metadata key a pruned model file keeps its spec under


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
        entry: dict[str, Any] = dict(hidden=layer_width(p), consumer_bias=c.bias is not None)
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


def _positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _entries(spec: dict[str, Any], key: str, fields: dict[str, Any], where: str) -> None:
    """Each entry of spec[key] is a mapping path -> {field: value} whose required fields pass their check."""
    table = spec.get(key, {})
    if not isinstance(table, dict):
        raise ValueError(f"{where}: the pruning spec's {key!r} must be a mapping of module path to entry; "
                         f"got {type(table).__name__}")
    for path, entry in table.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: the pruning spec's {key}[{str(path)[:80]!r}] must be a mapping; "
                             f"got {type(entry).__name__}")
        for name, (required, ok, expected) in fields.items():
            if name not in entry:
                if required:
                    raise ValueError(f"{where}: the pruning spec's {key}[{path[:80]!r}] lacks {name!r}")
                continue
            if not ok(entry[name]):
                raise ValueError(f"{where}: the pruning spec's {key}[{path[:80]!r}][{name!r}] must be {expected}; "
                                 f"got {str(entry[name])[:80]!r}")


def check_pruning_spec(spec: object, where: str = "pruning spec") -> dict[str, Any]:
    """`spec` when it is a well-formed pruning spec (types and ranges; the widths are checked against the model in
    `apply_spec_`); else ValueError in one line naming `where` and the field."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: the pruning spec must be a JSON object; got {type(spec).__name__}")
    if not isinstance(spec.get("model"), str):
        raise ValueError(f"{where}: the pruning spec lacks the registered model name ('model')")
    if not isinstance(spec.get("model_kwargs", {}), dict):
        raise ValueError(f"{where}: the pruning spec's 'model_kwargs' must be a mapping")
    for key in ("num_classes", "in_chans"):
        if spec.get(key) is not None and not _positive_int(spec[key]):
            raise ValueError(f"{where}: the pruning spec's {key!r} must be a positive integer; "
                             f"got {str(spec[key])[:80]!r}")
    positive = "a positive integer"
    _entries(spec, "groups", dict(
        hidden=(True, _positive_int, positive), consumer_bias=(True, lambda v: isinstance(v, bool), "true or false"),
        grn_eps=(False, lambda v: isinstance(v, float) and math.isfinite(v) and v > 0, "a positive number")), where)
    _entries(spec, "heads", dict(num_heads=(True, _positive_int, positive)), where)
    _entries(spec, "stages", dict(width=(True, _positive_int, positive), parts=(
        False, lambda v: isinstance(v, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                     for n in v), "a list of non-negative integers")), where)
    if "groups" not in spec or not any(spec.get(k) for k in ("groups", "heads", "stages")):
        raise ValueError(f"{where}: the pruning spec names no pruned group (its 'groups', 'heads' and 'stages' "
                         "are empty or missing)")
    return spec


def _within(what: str, path: str, value: int, size: int, model: str) -> None:
    if value > size:
        raise ValueError(f"the pruning spec keeps {value} {what} of {path!r}, which has {size} in {model}")


def _stage_keep(model: nn.Module, g: StageGroup, entry: dict[str, Any], name: str) -> torch.Tensor:
    """The first `width` channels of a stage, or the first n of each Inception part (checked against the parts)."""
    _within("channels", g.path, entry["width"], g.size(model), name)
    parts = g.parts(model)
    if not parts:
        return torch.arange(entry["width"])
    given = entry.get("parts")
    if not isinstance(given, list) or len(given) != len(parts) or sum(given) != entry["width"] or any(
            n > size or (needed and n < 1) for n, (_, size, needed) in zip(given, parts, strict=True)):
        raise ValueError(f"the pruning spec's parts of {g.path!r} must be {len(parts)} sizes within "
                         f"{[size for _, size, _ in parts]} summing to its width; got {str(given)[:80]}")
    return torch.cat([off + torch.arange(n) for (off, _, _), n in zip(parts, given, strict=True)])


@torch.no_grad()
def apply_spec_(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Give a freshly built model the shapes of the spec (weights are then loaded over it); ValueError when the spec
    is malformed or keeps more than the model has."""
    check_pruning_spec(spec)
    name = spec["model"]
    groups = {g.path: g for g in hidden_groups(model)}
    stage = {g.path: g for g in stage_groups(model)} if spec.get("stages") else {}
    for path, entry in spec.get("stages", {}).items():
        if path not in stage:
            raise ValueError(f"the spec prunes the channels of {path[:80]!r}, which {name} does not have as a "
                             f"prunable stage")
        slim_stage_(model, stage[path], _stage_keep(model, stage[path], entry, name))
    for path, entry in spec["groups"].items():
        if path not in groups:
            raise ValueError(f"the spec prunes {path[:80]!r}, which {name} does not have as an MLP group")
        g = groups[path]
        _within("hidden channels", path, entry["hidden"], g.size(model), name)
        slim_hidden_(model, g, torch.arange(entry["hidden"]))
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
            raise ValueError(f"the spec prunes heads of {path[:80]!r}, which {name} does not have as an attention")
        _within("heads", path, entry["num_heads"], attn[path].size(model), name)
        slim_heads_(model, attn[path], torch.arange(entry["num_heads"]))
    return model
