"""Importance of each prunable unit: weight magnitude, or first-order Taylor (|activation x gradient|)."""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from ...models.pruning.groups import Group, HeadGroup, StageGroup, resolve_member


def magnitude_scores(model: nn.Module, groups: list[Group]) -> list[torch.Tensor]:
    """Per unit of each group (hidden channel, head): producer rows' norm times consumer columns' norm."""
    scores = []
    for g in groups:
        if isinstance(g, StageGroup):
            width = g.size(model)
            w, r = torch.zeros(width), torch.zeros(width)
            for path, role in g.members:
                t = resolve_member(model, path)
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
        return [resolve_member(model, p) for p, r in g.members if r == "in"]
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

