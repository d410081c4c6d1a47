"""What tools need to know about a variant, declared once: `ModelTraits`.

A family's model class computes its traits from its constructor arguments in a classmethod `traits_for`
(keyword-only parameters named as the constructor's), so the registry answers `model_traits(name)` without
building anything, and the built model exposes the same object as `model.traits`.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

FEATURE_FORMATS = ("NCHW", "NLC")


@dataclass(frozen=True)
class ModelTraits:
    """The facts of one variant that tools read instead of probing a model.

    channels / reductions / taps: per feature stage (what `feature_info` lists), its channels, its stride from the
        input and the module whose output it is.
    num_features: channels of `forward_features`' output (the classifier's input).
    min_input_size: smallest (H, W) the network takes; input_multiple: H and W must be multiples of it (1: any).
    fixed_input_size: the only (H, W) it takes, or None.
    features_fmt: `forward_features` returns "NCHW" maps or "NLC" tokens; num_prefix_tokens: class tokens that
        lead those tokens.
    reparameterizable: it has parts that `reparameterize` merges or folds.
    grad_free: prefixes of parameter names whose gradient with respect to the logits is analytically zero, and
        grad_free_reason why (a value no logit depends on, or a per-channel constant a train-mode BatchNorm
        removes); such a gradient is exactly zero or rounding noise depending on kernels and threads.
    """

    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    taps: tuple[str, ...]
    num_features: int
    min_input_size: tuple[int, int] = (32, 32)
    input_multiple: int = 1
    fixed_input_size: tuple[int, int] | None = None
    features_fmt: str = "NCHW"
    num_prefix_tokens: int = 0
    reparameterizable: bool = False
    grad_free: tuple[str, ...] = ()
    grad_free_reason: str = ""

    def __post_init__(self) -> None:
        if not len(self.channels) == len(self.reductions) == len(self.taps):
            raise ValueError(f"channels, reductions and taps need one entry per feature stage; got "
                             f"{self.channels}, {self.reductions}, {self.taps}")
        if self.features_fmt not in FEATURE_FORMATS:
            raise ValueError(f"features_fmt must be one of {FEATURE_FORMATS}; got {self.features_fmt!r}")
        if self.input_multiple < 1 or min(self.min_input_size) < 1:
            raise ValueError(f"input_multiple and min_input_size must be positive; got {self.input_multiple} and "
                             f"{self.min_input_size}")
        if bool(self.grad_free) != bool(self.grad_free_reason):
            raise ValueError("grad_free prefixes and grad_free_reason go together")

    def with_stage_width(self, stage: int, width: int) -> ModelTraits:
        """These traits with feature stage `stage` at `width` channels (as pruning leaves it); the last stage's width
        is also `num_features`."""
        channels = list(self.channels)
        channels[stage] = width
        last = stage == len(channels) - 1
        return replace(self, channels=tuple(channels), num_features=width if last else self.num_features)


def hierarchy(dims: Sequence[int], *, stem_reduction: int = 4, **facts: Any) -> ModelTraits:
    """Traits of a `stem -> stages` hierarchy built by `ConvScopeModel.build_stages`: stage i has dims[i] channels
    at stride stem_reduction * 2**i and is `stages.{i}`; `facts` sets the other fields."""
    n = len(dims)
    return ModelTraits(channels=tuple(int(d) for d in dims),
                       reductions=tuple(stem_reduction * 2 ** i for i in range(n)),
                       taps=tuple(f"stages.{i}" for i in range(n)), num_features=int(dims[-1]), **facts)


def traits_of_arguments(model: Callable[..., Any], arguments: Mapping[str, Any]) -> ModelTraits:
    """`model.traits_for(...)` called with the constructor arguments it names, the constructor's defaults filling
    those not in `arguments`."""
    wanted = [k for k, p in inspect.signature(model.traits_for).parameters.items()
              if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    defaults = {k: p.default for k, p in inspect.signature(model).parameters.items()
                if p.default is not inspect.Parameter.empty}
    given = {**defaults, **arguments}
    missing = sorted(set(wanted) - set(given))
    if missing:
        raise TypeError(f"{model.__name__}.traits_for needs {missing}, which the constructor neither defaults nor "
                        "was given")
    return model.traits_for(**{k: given[k] for k in wanted})
