"""Model scaling rules of "Fast and Accurate Model Scaling" (Dollar, Singh, Girshick, CVPR 2021, arXiv 2103.06877).

To multiply a network's FLOPs by `s`, scale its depth by `d`, its width by `w` and its input resolution by `r`
with `d * w^2 * r^2 = s`. A rule fixes how `s` is shared: the exponents `e_d + e_w + e_r = 1` give
`d = s^e_d`, `w = s^(e_w / 2)`, `r = s^(e_r / 2)` (pycls `scaling_factors`). Activations (conv / matmul output
elements) grow as `d * w * r^2 = s^(e_d + e_w / 2 + e_r)`:

- "d" depth only, "r" resolution only: activations ~ s;
- "w" width only: activations ~ sqrt(s);
- "dwr" compound with an equal split (EfficientNet-style): s^(5/6);
- "dWr" fast compound scaling, `alpha` of the FLOPs from width and the rest split between depth and resolution
  (alpha = 0.8 is pycls' "d1_w8_g8_r1"): s^(1 - alpha / 2) = s^0.6, close to sqrt(s), hence faster on
  memory-bound hardware at the same FLOPs.

Any pycls-style weighting such as "d1_w8_r1" or "dw" is accepted too. As in pycls, depths are rounded per stage
(at least 1) and widths to multiples of 8; a stage with attention rounds its width to a multiple of
lcm(8, head_dim) so the heads stay whole (CAFormer: 32), and 8 keeps InceptionNeXt's 1/8 and 1/4 branch ratios
exact. The resolution is rounded to a multiple of 4 (pycls). The achieved multipliers are counted, not assumed.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import create_model, model_card
from .counting import count

__all__ = ["RULES", "ScaledConfig", "activation_exponent", "scale", "scaling_exponents", "scaling_factors",
           "scaling_table"]

#: The named rules and their FLOPs shares (e_d, e_w, e_r); "dWr" takes its width share from `alpha`.
RULES: dict[str, tuple[float, float, float] | None] = {
    "d": (1.0, 0.0, 0.0),
    "w": (0.0, 1.0, 0.0),
    "r": (0.0, 0.0, 1.0),
    "dw": (0.5, 0.5, 0.0),
    "dr": (0.5, 0.0, 0.5),
    "wr": (0.0, 0.5, 0.5),
    "dwr": (1 / 3, 1 / 3, 1 / 3),
    "dWr": None,
}


def scaling_exponents(rule: str, alpha: float = 0.8) -> tuple[float, float, float]:
    """The FLOPs shares (e_d, e_w, e_r), summing to 1, of a named rule or a pycls string like "d1_w8_r1"."""
    if rule == "dWr":
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (the share of FLOPs scaling given to width) must be in [0, 1]; got {alpha}")
        return (1 - alpha) / 2, alpha, (1 - alpha) / 2
    if rule in RULES:
        return RULES[rule]
    try:
        weights = {part[0]: float(part[1:]) for part in rule.split("_")}
    except (ValueError, IndexError):
        weights = {}
    if not weights or set(weights) - set("dwr") or any(v < 0 for v in weights.values()) or not sum(weights.values()):
        raise ValueError(f"unknown scaling rule {rule!r}; expected one of {sorted(RULES)} or a pycls weighting "
                         f"such as 'd1_w8_r1'")
    total = sum(weights.values())
    return tuple(weights.get(k, 0.0) / total for k in "dwr")  # type: ignore[return-value]


def scaling_factors(rule: str, flops_multiplier: float, alpha: float = 0.8) -> tuple[float, float, float]:
    """(d, w, r) with d * w^2 * r^2 = flops_multiplier."""
    if not flops_multiplier > 0:
        raise ValueError(f"flops_multiplier must be positive; got {flops_multiplier}")
    e_d, e_w, e_r = scaling_exponents(rule, alpha)
    s = flops_multiplier
    return s ** e_d, s ** (e_w / 2), s ** (e_r / 2)


def activation_exponent(rule: str, alpha: float = 0.8) -> float:
    """The paper's asymptotics: activations grow as s^(e_d + e_w / 2 + e_r)."""
    e_d, e_w, e_r = scaling_exponents(rule, alpha)
    return e_d + e_w / 2 + e_r


@dataclass
class ScaledConfig:
    """A scaled variant of a registered model: constructor kwargs, input size, and its counted cost."""

    model_name: str
    rule: str
    flops_multiplier: float                 # the target
    factors: tuple[float, float, float]     # (d, w, r) before rounding
    kwargs: dict[str, Any]                  # for create_model(model_name, **kwargs): depths, dims
    input_size: tuple[int, int, int]        # (C, H, W)
    params: int
    macs: int
    activations: int
    base_kwargs: dict[str, Any]
    base_input_size: tuple[int, int, int]
    base_params: int
    base_macs: int
    base_activations: int
    alpha: float = 0.8
    notes: list[str] = field(default_factory=list)

    @property
    def achieved_multiplier(self) -> float:
        """Counted MACs of the scaled model over the base model's."""
        return self.macs / self.base_macs

    @property
    def activations_multiplier(self) -> float:
        return self.activations / self.base_activations

    @property
    def params_multiplier(self) -> float:
        return self.params / self.base_params

    def build(self, **kwargs: Any) -> nn.Module:
        """The scaled model (extra kwargs, e.g. num_classes, go to create_model)."""
        return create_model(self.model_name, **{**self.kwargs, **kwargs})

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), achieved_multiplier=self.achieved_multiplier,
                    activations_multiplier=self.activations_multiplier, params_multiplier=self.params_multiplier)

    def summary(self) -> str:
        depths, dims = self.kwargs.get("depths"), self.kwargs.get("dims")
        return (f"{self.model_name} x{self.flops_multiplier:g} by {self.rule}: depths {depths}, dims {dims}, "
                f"{self.input_size[1]}x{self.input_size[2]}: MACs x{self.achieved_multiplier:.3f}, activations "
                f"x{self.activations_multiplier:.3f}, params x{self.params_multiplier:.3f}")


def _width_quanta(model: nn.Module) -> list[int]:
    """Per stage: 8, or lcm(8, head_dim) where the stage has attention heads."""
    quanta = []
    for stage in model.stages:
        q = 8
        for m in stage.modules():
            head_dim = getattr(m, "head_dim", None)
            if isinstance(head_dim, int) and head_dim > 0:
                q = math.lcm(q, head_dim)
        quanta.append(q)
    return quanta


def _architecture(model: nn.Module) -> tuple[list[int], list[int]]:
    if not hasattr(model, "stages") or not model.feature_info:
        raise ValueError(f"{type(model).__name__} is not a staged model (stem + stages); scale() needs "
                         "per-stage depths and widths")
    return [len(s.blocks) for s in model.stages], [int(f["num_chs"]) for f in model.feature_info]


@functools.lru_cache(maxsize=64)
def _base_count(name: str, input_size: tuple[int, int, int]) -> tuple[int, int, int]:
    r = count(name, (1, *input_size))
    return r.params, r.totals.macs, r.totals.activations


def scale(model_name: str, flops_multiplier: float, rule: str = "dWr", *, alpha: float = 0.8,
          input_size: tuple[int, int, int] | None = None) -> ScaledConfig:
    """Scale a registered model's FLOPs by `flops_multiplier` with a rule of Dollar et al. (2021).

    rule: "d", "w", "r", "dw", "dr", "wr", "dwr" (equal split), "dWr" (fast compound: `alpha` of the FLOPs
        scaling from width, the rest split between depth and resolution), or a pycls string "d1_w8_r1".
    input_size: the base (C, H, W); default the model card's.
    Returns the constructor kwargs (`depths`, `dims`) and input size, with params, MACs and activations
    counted on the meta device for the scaled and the base model.
    """
    card = model_card(model_name)
    d, w, r = scaling_factors(rule, flops_multiplier, alpha)
    with torch.device("meta"):
        base = create_model(card.name)
    depths, dims = _architecture(base)
    base_size = tuple(input_size or card.input_size)
    notes = []

    new_depths = [max(1, round(n * d)) for n in depths]
    new_dims = [max(q, round(c * w / q) * q) for c, q in zip(dims, _width_quanta(base))]
    c, h, wd = base_size
    new_size = (c, max(4, round(h * r / 4) * 4), max(4, round(wd * r / 4) * 4))
    fixed = getattr(base, "fixed_input_size", None)
    if fixed is not None and new_size[1:] != tuple(fixed):
        raise ValueError(f"{card.name} only takes {fixed[0]}x{fixed[1]} inputs, so rule {rule!r} (resolution x{r:.3f}) "
                         "cannot scale it; use a rule without resolution, e.g. 'd', 'w' or 'dw'")
    mh, mw = getattr(base, "min_input_size", (1, 1))
    if new_size[1] < mh or new_size[2] < mw:
        raise ValueError(f"{card.name}: the scaled input {new_size[1]}x{new_size[2]} is below the smallest size the "
                         f"network takes ({mh}x{mw}); use a larger multiplier or a rule without resolution")
    if new_depths != [max(1, n * d) for n in depths]:
        notes.append("depths rounded per stage")
    kwargs = dict(depths=tuple(new_depths), dims=tuple(new_dims))
    with torch.device("meta"):
        scaled = create_model(card.name, **kwargs)
    base_params, base_macs, base_acts = _base_count(card.name, base_size)
    scaled_count = count(scaled, (1, *new_size))
    return ScaledConfig(
        model_name=card.name, rule=rule, flops_multiplier=float(flops_multiplier), factors=(d, w, r),
        kwargs=kwargs, input_size=new_size, params=scaled_count.params, macs=scaled_count.totals.macs,
        activations=scaled_count.totals.activations, base_kwargs=dict(depths=tuple(depths), dims=tuple(dims)),
        base_input_size=base_size, base_params=base_params, base_macs=base_macs, base_activations=base_acts,
        alpha=alpha, notes=notes)


def scaling_table(model_name: str, flops_multiplier: float, rules: tuple[str, ...] = ("d", "w", "r", "dwr", "dWr"),
                  alpha: float = 0.8) -> str:
    """A markdown table comparing the rules on one model: configs, counted multipliers, paper's asymptotics."""
    rows = ["| rule | depths | dims | input | MACs x | activations x | asymptotic acts x | params x |",
            "|---|---|---|---|---|---|---|---|"]
    for rule in rules:
        c = scale(model_name, flops_multiplier, rule, alpha=alpha)
        rows.append(f"| {rule} | {list(c.kwargs['depths'])} | {list(c.kwargs['dims'])} | "
                    f"{c.input_size[1]}x{c.input_size[2]} | {c.achieved_multiplier:.3f} | "
                    f"{c.activations_multiplier:.3f} | {flops_multiplier ** activation_exponent(rule, alpha):.3f} | "
                    f"{c.params_multiplier:.3f} |")
    return "\n".join(rows)

