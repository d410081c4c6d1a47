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

Any pycls-style weighting such as "d1_w8_r1" or "dw" is accepted too. What is scaled is read from the family's
declared `ArchSpec` (which constructor arguments are depths and widths, per-block options, the width multiple each
stage needs, options that follow the input size), so every registered family scales with every rule. As in pycls,
depths are rounded per stage (at least 1) and widths to multiples of 8, or of lcm(8, what the stage needs):
whole attention heads (CAFormer: 32), gnConv's channel halvings (HorNet order 5: 16). The resolution is rounded to
a multiple of 4, or of the architecture's input multiple (RandFormer: 32).

Rounding can miss the target (convnext_tiny x4 by dWr lands at x3.58 in pycls' rounding), so the achieved MACs are
counted and, when they miss by more than `tolerance`, the rule's finest dimension (width, else resolution, else
depth) is corrected by a few secant steps on the counted MACs. The achieved multipliers are counted, not assumed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import create_model, family_of, model_arch, model_card
from ..models.registry import ArchSpec
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
    kwargs: dict[str, Any]                  # for create_model(model_name, **kwargs): depths, widths, ...
    input_size: tuple[int, int, int]        # (C, H, W)
    depths: tuple[int, ...]
    widths: tuple[int, ...]
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
        return (f"{self.model_name} x{self.flops_multiplier:g} by {self.rule}: depths {self.depths}, widths "
                f"{self.widths}, {self.input_size[1]}x{self.input_size[2]}: MACs x{self.achieved_multiplier:.3f}, "
                f"activations x{self.activations_multiplier:.3f}, params x{self.params_multiplier:.3f}")


@dataclass(frozen=True)
class _Candidate:
    knobs: tuple[float, float, float]   # (d, w, r) factors before rounding
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    size: tuple[int, int, int]
    kwargs: dict[str, Any]
    params: int
    macs: int
    activations: int


class _Scaler:
    """Rounds (d, w, r) factors to a buildable configuration of one variant and counts it."""

    def __init__(self, name: str, spec: ArchSpec, arch: Mapping[str, Any], base_size: tuple[int, int, int]) -> None:
        self.name, self.spec, self.arch, self.base_size = name, spec, arch, base_size
        self.depths, self.widths = spec.stages(arch)
        self.quanta = spec.quanta(arch)
        self.step = math.lcm(4, spec.input_step)

    def kwargs(self, depths, widths, size) -> dict[str, Any]:
        return self.spec.rebuild(self.arch, depths, widths, input_hw=size[1:])

    def candidate(self, d: float, w: float, r: float) -> _Candidate:
        depths = tuple(max(1, round(n * d)) for n in self.depths)
        widths = tuple(max(q, round(c * w / q) * q) for c, q in zip(self.widths, self.quanta, strict=False))
        c, h, wd = self.base_size
        size = (c, max(self.step, round(h * r / self.step) * self.step),
                max(self.step, round(wd * r / self.step) * self.step))
        return self.measure((d, w, r), depths, widths, size)

    def measure(self, knobs: tuple[float, float, float], depths: tuple[int, ...], widths: tuple[int, ...],
                size: tuple[int, int, int]) -> _Candidate:
        """Count the configuration with these depths, widths and input size (ValueError below the minimum input)."""
        kwargs = self.kwargs(depths, widths, size)
        with torch.device("meta"):
            model = create_model(self.name, **kwargs)
        mh, mw = model.traits.min_input_size
        if size[1] < mh or size[2] < mw:
            raise ValueError(f"{self.name}: the scaled input {size[1]}x{size[2]} is below the smallest size the "
                             f"network takes ({mh}x{mw}); use a larger multiplier or a rule without resolution")
        r_ = count(model, (1, *size))
        return _Candidate(knobs, depths, widths, size, kwargs, r_.params, r_.totals.macs, r_.totals.activations)


#: Exponent of MACs in each factor, the secant's first guess: depth ~ linear, width and resolution ~ quadratic.
_FIRST_SLOPE = (1.0, 2.0, 2.0)


def _compensate(scaler: _Scaler, first: _Candidate, knob: int, target_macs: float, tolerance: float,
                max_steps: int = 4) -> tuple[_Candidate, int]:
    """Secant steps on factor `knob` (0 = d, 1 = w, 2 = r) towards `target_macs`; the closest candidate counted,
    and how many steps were taken."""
    def miss(c: _Candidate) -> float:
        return abs(math.log(c.macs / target_macs))

    best, slope, steps = first, _FIRST_SLOPE[knob], 0
    cur = first
    seen = {(first.depths, first.widths, first.size)}
    while steps < max_steps and miss(best) > math.log1p(tolerance):
        knobs = list(cur.knobs)
        knobs[knob] *= (target_macs / cur.macs) ** (1 / slope)
        nxt = scaler.candidate(*knobs)
        steps += 1
        key = (nxt.depths, nxt.widths, nxt.size)
        if key in seen:  # rounding lands on a configuration already counted: no finer step exists
            break
        seen.add(key)
        ratio = math.log(nxt.knobs[knob] / cur.knobs[knob])
        if abs(ratio) > 1e-9 and nxt.macs != cur.macs:
            slope = min(max(math.log(nxt.macs / cur.macs) / ratio, 0.25), 4.0)
        cur = nxt
        if miss(cur) < miss(best):
            best = cur
    return best, steps


def _refine_widths(scaler: _Scaler, first: _Candidate, target_macs: float, tolerance: float,
                   max_steps: int = 6) -> tuple[_Candidate, int]:
    """Greedy steps of one width quantum on one stage at a time towards `target_macs`, for when every uniform width
    factor rounds past it (a narrow attention stage holds 1 or 2 whole heads, nothing between); the closest
    candidate and how many steps it took."""
    def miss(c: _Candidate) -> float:
        return abs(math.log(c.macs / target_macs))

    best, steps = first, 0
    while steps < max_steps and miss(best) > math.log1p(tolerance):
        sign = 1 if best.macs < target_macs else -1  # MACs grow with every width: a step away cannot get closer
        moves = []
        for i, q in enumerate(scaler.quanta):
            widths = list(best.widths)
            widths[i] += sign * q
            if widths[i] < q:
                continue
            try:
                moves.append(scaler.measure(best.knobs, best.depths, tuple(widths), best.size))
            except ValueError:  # the family ties these widths (ConViT's one width, VOLO's stages 2-4)
                continue
        nxt = min(moves, key=miss, default=best)
        if miss(nxt) >= miss(best):
            break
        best, steps = nxt, steps + 1
    return best, steps


_BASE_COUNTS: dict[str, tuple[int, int, int]] = {}


def _base_count(name: str, input_size: tuple[int, int, int], kwargs: dict[str, Any]) -> tuple[int, int, int]:
    """(params, MACs, activations) of the unscaled variant, counted once per process."""
    key = repr((name, input_size, sorted(kwargs.items())))  # kwargs may hold dicts: not hashable
    if key not in _BASE_COUNTS:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
        r = count(model, (1, *input_size))
        _BASE_COUNTS[key] = (r.params, r.totals.macs, r.totals.activations)
    return _BASE_COUNTS[key]


def scale(model_name: str, flops_multiplier: float, rule: str = "dWr", *, alpha: float = 0.8,
          input_size: tuple[int, int, int] | None = None, tolerance: float = 0.05) -> ScaledConfig:
    """Scale a registered model's FLOPs by `flops_multiplier` with a rule of Dollar et al. (2021).

    rule: "d", "w", "r", "dw", "dr", "wr", "dwr" (equal split), "dWr" (fast compound: `alpha` of the FLOPs
        scaling from width, the rest split between depth and resolution), or a pycls string "d1_w8_r1".
    input_size: the base (C, H, W); default the model card's.
    tolerance: largest relative miss of the counted MACs multiplier accepted before the rule's finest dimension
        (width, else resolution, else depth) is corrected.
    Returns the constructor kwargs (depths, widths, and the per-block and input-size-dependent options the family
    declares) and input size, with params, MACs and activations counted on the meta device for the scaled and
    the base model.
    """
    card = model_card(model_name)
    family = family_of(card.name)
    if family.spec is None:
        raise ValueError(f"{card.name}: family {family.name!r} declares no architecture spec, so scale() cannot "
                         "change its depths and widths")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0; got {tolerance}")
    e_d, e_w, e_r = scaling_exponents(rule, alpha)
    d, w, r = scaling_factors(rule, flops_multiplier, alpha)
    base_size = tuple(int(v) for v in (input_size or card.input_size))
    if len(base_size) != 3 or min(base_size) < 1:
        raise ValueError(f"input_size must be (C, H, W) with positive sizes; got {input_size}")
    scaler = _Scaler(card.name, family.spec, model_arch(card.name), base_size)
    base_kwargs = scaler.kwargs(scaler.depths, scaler.widths, base_size)
    base_params, base_macs, base_acts = _base_count(card.name, base_size, base_kwargs)

    first = scaler.candidate(d, w, r)
    notes = []
    if list(first.depths) != [max(1, n * d) for n in scaler.depths]:
        notes.append("depths rounded per stage")
    # correct the finest dimension the rule uses first; a coarse one (depth, RandFormer's 32-pixel resolution
    # steps) only when the finer ones cannot get closer
    best = first
    for knob in [k for k, e in ((1, e_w), (2, e_r), (0, e_d)) if e > 0]:
        start = best
        best, steps = _compensate(scaler, start, knob, flops_multiplier * base_macs, tolerance)
        if best is not start:
            notes.append(f"{'dwr'[knob]} corrected after rounding: MACs x{start.macs / base_macs:.3f} -> "
                         f"x{best.macs / base_macs:.3f} in {steps} counted step(s)")
    target = flops_multiplier * base_macs
    if e_w > 0 and abs(math.log(best.macs / target)) > math.log1p(tolerance):
        start = best
        best, steps = _refine_widths(scaler, start, target, tolerance)
        if best is not start:
            notes.append(f"widths refined per stage (no uniform width factor lands closer with widths in multiples of "
                         f"{scaler.quanta}): MACs x{start.macs / base_macs:.3f} -> x{best.macs / base_macs:.3f} in "
                         f"{steps} step(s)")
    if abs(math.log(best.macs / target)) > math.log1p(tolerance):
        notes.append(f"closest reachable: MACs x{best.macs / base_macs:.3f} (widths in multiples of {scaler.quanta}, "
                     f"input sides in multiples of {scaler.step})")
    return ScaledConfig(
        model_name=card.name, rule=rule, flops_multiplier=float(flops_multiplier), factors=(d, w, r),
        kwargs=best.kwargs, input_size=best.size, depths=best.depths, widths=best.widths, params=best.params,
        macs=best.macs, activations=best.activations, base_kwargs=base_kwargs, base_input_size=base_size,
        base_params=base_params, base_macs=base_macs, base_activations=base_acts, alpha=alpha, notes=notes)


def scaling_table(model_name: str, flops_multiplier: float, rules: tuple[str, ...] = ("d", "w", "r", "dwr", "dWr"),
                  alpha: float = 0.8) -> str:
    """A markdown table comparing the rules on one model: configs, counted multipliers, paper's asymptotics."""
    rows = ["| rule | depths | dims | input | MACs x | activations x | asymptotic acts x | params x |",
            "|---|---|---|---|---|---|---|---|"]
    for rule in rules:
        c = scale(model_name, flops_multiplier, rule, alpha=alpha)
        rows.append(f"| {rule} | {list(c.depths)} | {list(c.widths)} | "
                    f"{c.input_size[1]}x{c.input_size[2]} | {c.achieved_multiplier:.3f} | "
                    f"{c.activations_multiplier:.3f} | {flops_multiplier ** activation_exponent(rule, alpha):.3f} | "
                    f"{c.params_multiplier:.3f} |")
    return "\n".join(rows)
