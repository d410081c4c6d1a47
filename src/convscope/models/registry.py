"""The model registry: every variant is a builder function plus a ModelCard with the paper's figures."""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
#: How an official MACs figure may count (described in `convscope.analysis.counting.MACS_CONVENTIONS`).
MACS_CONVENTION_NAMES = ("fvcore", "fvcore_manual_cf_ln", "macs")


@dataclass(frozen=True)
class ModelCard:
    """What the paper and its official repository say about one variant.

    `params_m` and `macs_g` are the official figures (millions of parameters, billions of multiply-accumulates:
    most tables call them "FLOPs" but count MACs) at `input_size`. `source` says where each figure was read.
    `frozen_params_m` counts non-trainable parameters listed apart (RandFormer's random matrices).
    `macs_convention` says how the official figure counts (`convscope.analysis.counting.MACS_CONVENTIONS`):
    "fvcore" (the default: fvcore's FlopCountAnalysis, which timm's tables and most official READMEs use; it adds
    small charges for norms, adaptive pooling and upsampling to the conv / matmul MACs), "fvcore_manual_cf_ln"
    (fvcore on official code whose channels-first LayerNorm is written out element-wise, so fvcore skips it:
    HorNet) or "macs" (conv / matmul multiply-accumulates only).
    `deploy_params_m` is the official count of the re-parameterised (deploy) form where the official code has one.
    `macs_form` says which form of the network the official MACs figure counts: "train" (the default) or
    "deploy" (the re-parameterised form: RepLKNet's and UniRepLKNet's READMEs count merged kernels).
    """

    name: str
    family: str
    paper: str
    arxiv: str
    repo: str
    params_m: float
    macs_g: float | None
    input_size: tuple[int, int, int] = (3, 224, 224)
    top1: float | None = None
    pretrain: str = "ImageNet-1k"
    source: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    drop_path_rate: float = 0.0
    timm_name: str | None = None
    frozen_params_m: float = 0.0
    macs_convention: str = "fvcore"
    deploy_params_m: float | None = None
    macs_form: str = "train"
    notes: str = ""

    def __post_init__(self) -> None:
        if self.macs_convention not in MACS_CONVENTION_NAMES:
            raise ValueError(f"{self.name}: macs_convention must be one of {MACS_CONVENTION_NAMES}; "
                             f"got {self.macs_convention!r}")
        if self.macs_form not in ("train", "deploy"):
            raise ValueError(f"{self.name}: macs_form must be 'train' or 'deploy'; got {self.macs_form!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    card: ModelCard
    aliases: tuple[str, ...] = field(default_factory=tuple)


_MODELS: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}
_OFFICIAL_CONVERTERS: dict[str, Callable[[dict, nn.Module], dict]] = {}


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message suggests the closest names."""


def register_model(card: ModelCard, aliases: tuple[str, ...] = ()) -> Callable:
    """Decorator: register `fn(**kwargs) -> nn.Module` under `card.name` (and its aliases)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if card.name in _MODELS or card.name in _ALIASES:
            raise ValueError(f"model {card.name!r} is registered twice")
        _MODELS[card.name] = _Entry(fn, card, tuple(aliases))
        for alias in aliases:
            _ALIASES[alias] = card.name
        return fn

    return wrap


def register_official_converter(family: str) -> Callable:
    """Decorator: `fn(state_dict, model) -> state_dict` mapping a family's official checkpoint keys to ours."""

    def wrap(fn: Callable[[dict, nn.Module], dict]) -> Callable[[dict, nn.Module], dict]:
        _OFFICIAL_CONVERTERS[family] = fn
        return fn

    return wrap


def official_converter(family: str) -> Callable[[dict, nn.Module], dict] | None:
    return _OFFICIAL_CONVERTERS.get(family)


def resolve_name(name: str) -> str:
    """The registered name for `name` or one of its aliases; otherwise UnknownModelError with suggestions."""
    if name in _MODELS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = list(_MODELS) + list(_ALIASES)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    if not close:  # fall back to substring matches, e.g. 'convnext' -> all convnext variants
        close = sorted(n for n in _MODELS if name.lower() in n)[:5]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `convscope list`"
    raise UnknownModelError(f"unknown model {name!r}{hint}")


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names matching a shell-style `pattern` (case-insensitive), optionally one family."""
    pattern = pattern.lower()
    return sorted(
        n for n, e in _MODELS.items()
        if fnmatch.fnmatchcase(n.lower(), pattern) and (family is None or e.card.family == family)
    )


def list_families() -> list[str]:
    return sorted({e.card.family for e in _MODELS.values()})


def model_card(name: str) -> ModelCard:
    """The ModelCard of a registered model (aliases accepted)."""
    return _MODELS[resolve_name(name)].card


def model_builder(name: str) -> Callable[..., nn.Module]:
    return _MODELS[resolve_name(name)].builder


def create_model(name: str, *, pretrained: str | None = None, num_classes: int = 1000, in_chans: int = 3,
                 drop_path_rate: float | None = None, features_only: bool = False,
                 out_indices: tuple[int, ...] | None = None, deploy: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model (timm's signature).

    pretrained: path to a local safetensors or weights-only torch file (nothing is downloaded); loaded with
        `load_checkpoint(source="auto")` before any feature extraction wrapping.
    drop_path_rate: stochastic depth for training; None means 0 (the ModelCard has the paper's value).
    features_only: return a backbone whose forward gives the stage maps selected by `out_indices`.
    deploy: build the re-parameterised inference form (merged kernels, folded BatchNorms). It is built in its
        train form and re-parameterised in place; `pretrained` may hold the train form, our deploy form or an
        official (partial) deploy form: the model is first brought to the checkpoint's form, loaded strictly,
        then fully re-parameterised.
    Other keyword arguments go to the family's constructor.
    """
    from ..layers.reparam import reparameterize_
    from .features import FeatureExtractor
    from .weights import load_checkpoint

    entry = _MODELS[resolve_name(name)]
    if pretrained is not None and not isinstance(pretrained, (str, bytes)) and not hasattr(pretrained, "__fspath__"):
        raise ValueError("pretrained must be the path of a local weights file (nothing is downloaded at run "
                         f"time); got {pretrained!r}")
    model = entry.builder(num_classes=num_classes, in_chans=in_chans,
                          drop_path_rate=0.0 if drop_path_rate is None else float(drop_path_rate), **kwargs)
    card = entry.card
    model.model_name = card.name
    model.card = card
    model.pretrained_cfg = dict(  # what timm's data helpers read
        input_size=card.input_size, mean=card.mean, std=card.std, interpolation=card.interpolation,
        crop_pct=card.crop_pct, num_classes=num_classes, first_conv=None, classifier=None,
    )
    if pretrained is not None:
        load_checkpoint(model, pretrained, match_reparam_form=deploy)
    if deploy:
        reparameterize_(model)
    if features_only:
        model = FeatureExtractor(model, out_indices)
    return model


def resolve_model(model: nn.Module | str, *, device: str | None = None, what: str = "model") -> tuple[nn.Module, str]:
    """(module, name) for an nn.Module or a registered model name.

    A name is built with `create_model` (on `device`, e.g. "meta" for counting without memory; None: the default
    device); a module passes through unchanged, named by its `model_name` or class. ValueError for anything else,
    naming `what` the caller expected.
    """
    if isinstance(model, str):
        import torch

        name = resolve_name(model)
        if device is None:
            return create_model(name), name
        with torch.device(device):
            return create_model(name), name
    if not isinstance(model, nn.Module):
        raise ValueError(f"{what} must be an nn.Module or a registered model name; got {type(model).__name__}")
    return model, getattr(model, "model_name", type(model).__name__)
