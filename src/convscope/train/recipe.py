"""The training recipe's parts: AdamW parameter groups, the warm-up + cosine schedule, the weight EMA, and the
multi-sample dropout head with its loss.

The recipe is the one the ConvNeXt / MetaFormer papers train with, scaled down: AdamW with linear warm-up and a
cosine schedule per optimizer step, weight decay on matrices and kernels only, stochastic depth at the
ModelCard's rate, label smoothing, Mixup/CutMix and RandAugment when asked, gradient clipping, an EMA of the
weights, bf16 autocast, channels-last, gradient accumulation, torch.compile, and a multi-sample dropout head.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.mixing import classification_loss
from ..models.base import MATCH_PREV_GROUP


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                 head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on parameters with 2+ dimensions (conv kernels, linear weights); none on
    1-D ones (norm weights and biases, biases, layer scales, GRN's gamma/beta) nor on a model's
    `no_weight_decay()` names. Frozen parameters are left out.

    Without `layer_decay`: two groups. With it (timm's `param_groups_layer_decay`): a decay and a no-decay group
    per layer of `layer_ids(model)`, each with `lr_scale = layer_decay ** (last - layer)`, the head's (the layer no
    group_matcher rule matches) times `head_lr_scale`; `WarmupCosine` multiplies a group's lr by its lr_scale."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    ids, head = layer_ids(model) if layer_decay is not None else ({}, set())
    last = max(ids.values(), default=0)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name in skip)
        layer = ids.get(name, last)
        if (layer, decay) not in groups:
            groups[(layer, decay)] = dict(params=[], weight_decay=weight_decay if decay else 0.0)
            if layer_decay is not None:
                scale = layer_decay ** (last - layer) * (head_lr_scale if name in head else 1.0)
                groups[(layer, decay)]["lr_scale"] = scale
        groups[(layer, decay)]["params"].append(p)
    if layer_decay is None:
        return [groups.get((0, d), dict(params=[], weight_decay=weight_decay if d else 0.0)) for d in (True, False)]
    return list(groups.values())


def _group_key(name: str, rules: list[tuple[re.Pattern, int, tuple[int, ...] | None]]) -> tuple[float, ...]:
    """timm's ordering key of a parameter: the rule's ordinal, the numbers it captured and its suffix (inf when no
    rule matches: the head)."""
    for rx, ordinal, suffix in rules:
        m = rx.match(name)
        if m:
            return (float(ordinal), *(float(g) for g in m.groups()), *(float(s) for s in suffix or ()))
    return (math.inf,)


def layer_ids(model: nn.Module) -> tuple[dict[str, int], set[str]]:
    """Each parameter's layer (0: the stem) from the model's fine `group_matcher()`, numbered as timm's
    `group_parameters` numbers them (keys sorted, a key ending in MATCH_PREV_GROUP joining the layer before), and
    the names no rule matches (the head, numbered last)."""
    if not hasattr(model, "group_matcher"):
        raise ValueError(f"{type(model).__name__} has no group_matcher(): layer-wise lr decay needs one")
    rules = []
    for ordinal, spec in enumerate(model.group_matcher(coarse=False).values()):
        for pattern, suffix in ([(spec, None)] if isinstance(spec, str) else spec or ()):
            rules.append((re.compile(pattern), ordinal, suffix))
    keys = {name: _group_key(name, rules) for name, _ in model.named_parameters()}
    layer_of: dict[tuple[float, ...], int] = {}
    lid = -1
    for key in sorted(set(keys.values())):
        if lid < 0 or key[-1] != MATCH_PREV_GROUP[0]:
            lid += 1
        layer_of[key] = lid
    return {n: layer_of[k] for n, k in keys.items()}, {n for n, k in keys.items() if k == (math.inf,)}


class WarmupCosine:
    """Learning rate per optimizer step s (0-based): linear warm-up lr * (s + 1) / warmup for s < warmup, then
    min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2 with t = (s - warmup) / (total - warmup) going 0 -> 1."""

    def __init__(self, optimizer: torch.optim.Optimizer | None, lr: float, min_lr: float, warmup_steps: int,
                 total_steps: int) -> None:
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps, total >= 1; got {warmup_steps}, {total_steps}")
        self.optimizer, self.lr, self.min_lr = optimizer, lr, min_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.last_step = -1

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def step(self, step: int) -> float:
        """Set the learning rate of optimizer step `step` in every parameter group."""
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        return dict(lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                    last_step=self.last_step)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("lr", "min_lr", "warmup_steps", "total_steps"):
            if state[k] != getattr(self, k):
                raise ValueError(f"schedule {k} differs from the checkpoint's: {getattr(self, k)} vs {state[k]}")
        self.last_step = state["last_step"]


class ModelEma:
    """Exponential moving average of the weights: ema = d * ema + (1 - d) * w after every optimizer step, with
    d = min(decay, (1 + step) / (10 + step)) when `warmup` (so that short runs are not dominated by the init).
    Non-float buffers are copied."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_f, cur_f = [], []
        for e, c in zip(self.module.state_dict().values(), model.state_dict().values(), strict=False):
            if e.is_floating_point():
                ema_f.append(e)
                cur_f.append(c.detach())
            else:
                e.copy_(c)
        torch._foreach_lerp_(ema_f, cur_f, 1.0 - d)


class TrainModule(nn.Module):
    """What the optimizer trains (and DDP / torch.compile wrap): the model, with an optional multi-sample dropout
    head (Inoue, arXiv 1905.09788): in training, `samples` dropout masks on the pooled features, each through the
    classifier, giving logits (samples, B, classes) whose losses are averaged."""

    def __init__(self, model: nn.Module, msd_samples: int = 0, msd_drop: float = 0.5) -> None:
        super().__init__()
        self.model, self.msd_samples, self.msd_drop = model, msd_samples, msd_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.msd_samples == 0 or not self.training:
            return self.model(x)
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        fc = self.model.get_classifier()
        return torch.stack([fc(F.dropout(feats, self.msd_drop, True)) for _ in range(self.msd_samples)])


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Classification loss; multi-sample logits (K, B, C) give the mean of the K losses."""
    if logits.ndim == 3:
        return torch.stack([classification_loss(lg, targets, smoothing) for lg in logits]).mean()
    return classification_loss(logits, targets, smoothing)
