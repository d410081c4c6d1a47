"""The model registry: families declared in one call each, with every variant's paper card and pretrained config.

A family file defines its model class and then registers everything about it at once:

    register_family(
        "convnext", ConvNeXt, paper=Paper("A ConvNet for the 2020s", "2201.03545", "facebookresearch/ConvNeXt"),
        spec=ArchSpec(depths="depths", widths="dims"), converter=convert_official, timm=True,
        variants={
            "convnext_tiny": variant(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768),
                                     card=Card(params_m=28.59, macs_g=4.47, top1=82.1, source="...")),
        })

Every variant name is written literally once, so `grep -rn convnext_tiny src/` finds its declaration.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers.reparam import reparameterize_
from .traits import ModelTraits, traits_of_arguments

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
#: How an official MACs figure may count (described in `convscope.analysis.counting.MACS_CONVENTIONS`).
MACS_CONVENTION_NAMES = ("fvcore", "fvcore_manual_cf_ln", "macs")


@dataclass(frozen=True)
class PretrainedCfg:
    """A user's preprocessing for one variant (what timm calls the pretrained config): the input size the weights
    expect, normalisation, resize interpolation and the evaluation centre-crop fraction."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be (C, H, W) with positive sizes; got {self.input_size}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1]; got {self.crop_pct}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Paper:
    """Where a family comes from: title, arXiv id and official repository (owner/name)."""

    title: str
    arxiv: str
    repo: str


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
    `drop_path_rate` is the paper's stochastic depth for training. `pretrained_cfg` is the preprocessing the
    variant's weights expect; its `input_size` is the card's.
    """

    name: str
    family: str
    paper: str
    arxiv: str
    repo: str
    params_m: float
    macs_g: float | None
    top1: float | None = None
    pretrain: str = "ImageNet-1k"
    source: str = ""
    drop_path_rate: float = 0.0
    timm_name: str | None = None
    frozen_params_m: float = 0.0
    macs_convention: str = "fvcore"
    deploy_params_m: float | None = None
    macs_form: str = "train"
    notes: str = ""
    pretrained_cfg: PretrainedCfg = field(default_factory=PretrainedCfg)

    def __post_init__(self) -> None:
        if self.macs_convention not in MACS_CONVENTION_NAMES:
            raise ValueError(f"{self.name}: macs_convention must be one of {MACS_CONVENTION_NAMES}; "
                             f"got {self.macs_convention!r}")
        if self.macs_form not in ("train", "deploy"):
            raise ValueError(f"{self.name}: macs_form must be 'train' or 'deploy'; got {self.macs_form!r}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) at which the official figures were measured, which is also the default input."""
        return self.pretrained_cfg.input_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CARD_FIELDS = frozenset(f.name for f in fields(ModelCard)) - {"name", "family", "paper", "arxiv", "pretrained_cfg"}
_CFG_FIELDS = frozenset(f.name for f in fields(PretrainedCfg))


class _Unset:
    """The value of a Card field that a registration does not declare."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Card:
    """The card fields one registration declares: a variant's (`variant(card=Card(...))`) or those a family's
    variants share (`register_family(card=Card(...))`, a variant's own win). ModelCard fields (the paper's figures,
    sources, conventions; see ModelCard) and PretrainedCfg fields (the preprocessing) together; a field left out is
    not declared, so the family's value or else the default applies. An unknown field is a TypeError."""

    params_m: float = UNSET
    macs_g: float | None = UNSET
    top1: float | None = UNSET
    pretrain: str = UNSET
    source: str = UNSET
    drop_path_rate: float = UNSET
    timm_name: str | None = UNSET
    repo: str = UNSET
    frozen_params_m: float = UNSET
    macs_convention: str = UNSET
    deploy_params_m: float | None = UNSET
    macs_form: str = UNSET
    notes: str = UNSET
    input_size: tuple[int, int, int] = UNSET
    mean: tuple[float, ...] = UNSET
    std: tuple[float, ...] = UNSET
    interpolation: str = UNSET
    crop_pct: float = UNSET

    def declared(self) -> dict[str, Any]:
        """The fields this card sets, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not UNSET}


# -- architecture specs --------------------------------------------------------------------------------------------
StageQuantum = Callable[[Mapping[str, Any], int], int]


@dataclass(frozen=True)
class ArchSpec:
    """How a family's constructor arguments describe its architecture, for tools that change it (scaling,
    pruning, export) without guessing.

    depths / widths: the constructor arguments holding per-stage block counts and channel widths.
    per_block: arguments holding one entry per block, nested per stage (UniRepLKNet's kernel sizes); when a
        stage's depth changes, its pattern is repeated or cut to the new depth.
    width_quantum: per stage, the multiple every width must be (a function of the arguments and the stage
        index, or an int for all stages): attention heads, gnConv's channel halving, a dw expansion ratio.
    input_step: the input sides `scale()` may choose are multiples of this. A variant's own input multiple is
        one of its ModelTraits; this is the family's, which `at_input_size` may make finer than a variant's (a
        CrossViT built for 240 needs multiples of 120, one rebuilt for the input takes any multiple of 12).
    at_input_size: the arguments that follow the input size, e.g. a global filter's spectrum or a token-mixing
        matrix sized to the token count: `fn(arguments, (H, W)) -> {argument: value}`.
    """

    depths: str = "depths"
    widths: str = "dims"
    per_block: tuple[str, ...] = ()
    width_quantum: int | StageQuantum = 8
    input_step: int = 1
    at_input_size: Callable[[Mapping[str, Any], tuple[int, int]], dict[str, Any]] | None = None

    def stages(self, arch: Mapping[str, Any]) -> tuple[list[int], list[int]]:
        """(depths, widths) of a variant's constructor arguments."""
        return list(arch[self.depths]), list(arch[self.widths])

    def quanta(self, arch: Mapping[str, Any]) -> list[int]:
        """The multiple each stage's width must be: lcm of 8 (pycls) and what the architecture needs."""
        n = len(arch[self.widths])
        q = self.width_quantum
        return [math.lcm(8, q if isinstance(q, int) else q(arch, i)) for i in range(n)]

    def rebuild(self, arch: Mapping[str, Any], depths: Sequence[int], widths: Sequence[int],
                input_hw: tuple[int, int] | None = None) -> dict[str, Any]:
        """The constructor arguments that change for new depths, widths and (optionally) input size."""
        out: dict[str, Any] = {self.depths: tuple(int(d) for d in depths), self.widths: tuple(int(w) for w in widths)}
        for name in self.per_block:
            out[name] = tuple(_resample(stage, d) for stage, d in zip(arch[name], depths, strict=False))
        if input_hw is not None and self.at_input_size is not None:
            out.update(self.at_input_size({**arch, **out}, input_hw))
        return out


def _resample(pattern: Sequence[Any], depth: int) -> tuple[Any, ...]:
    """A stage's per-block pattern repeated or cut to `depth` blocks."""
    return tuple(pattern[j % len(pattern)] for j in range(depth))


# -- families and variants -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One registered name: its constructor arguments, its card and config fields, and its aliases."""

    arch: Mapping[str, Any]
    card: Card
    aliases: tuple[str, ...] = ()


def _check_card(card: Any, where: str) -> Card:
    if not isinstance(card, Card):
        raise TypeError(f"{where} must be a Card(...) of ModelCard and PretrainedCfg fields; got "
                        f"{type(card).__name__}")
    return card


def variant(*, card: Card, aliases: Sequence[str] = (), **arch: Any) -> Variant:
    """A variant: constructor arguments as keywords; `card` holds its ModelCard and PretrainedCfg fields
    (`Card(params_m=..., macs_g=..., top1=..., source=..., input_size=..., crop_pct=..., ...)`)."""
    return Variant(dict(arch), _check_card(card, "variant(card=...)"), tuple(aliases))


@dataclass(frozen=True)
class Family:
    """A registered family: its model class, architecture spec, official-key converter and variants."""

    name: str
    model: Callable[..., nn.Module]
    paper: Paper
    spec: ArchSpec | None
    converter: Callable[[dict, nn.Module], dict] | None
    variants: tuple[str, ...]
    #: checkpoint source ("official", "transformers", ...) -> converter; "official" is `converter`
    converters: Mapping[str, Callable[[dict, nn.Module], dict]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    family: Family
    arch: Mapping[str, Any]
    card: ModelCard

    def build(self, **kwargs: Any) -> nn.Module:
        return self.family.model(**{**self.arch, **kwargs})


_MODELS: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}
_FAMILIES: dict[str, Family] = {}


def register_family(name: str, model: Callable[..., nn.Module], *, paper: Paper, variants: Mapping[str, Variant],
                    spec: ArchSpec | None = ArchSpec(), converter: Callable[[dict, nn.Module], dict] | None = None,
                    converters: Mapping[str, Callable[[dict, nn.Module], dict]] | None = None, timm: bool = False,
                    card: Card | None = None,
                    arch: Mapping[str, Any] | None = None) -> Family:
    """Register a family and all of its variants.

    model: the class (or any callable) built as `model(**variant_arguments, num_classes=..., in_chans=...,
        drop_path_rate=...)`.
    paper: title, arXiv id and official repository; a variant may override `repo` (e.g. timm's own variants).
    variants: name -> `variant(...)`, every name written literally.
    spec: how the constructor arguments describe the architecture (None: the family cannot be rescaled).
    converter: `fn(state_dict, model) -> state_dict` mapping the official repository's keys to ours.
    converters: converters per checkpoint source, e.g. `{"official": f, "transformers": g}` (Hugging Face
        transformers' keys); `converter=f` is short for `converters={"official": f}`.
    timm: timm carries these variants under the same names (a variant may set `timm_name` itself).
    card: a Card of the ModelCard / PretrainedCfg fields every variant shares (a variant's own fields win).
    arch: constructor arguments shared by every variant (a variant's own win).
    """
    if name in _FAMILIES:
        raise ValueError(f"family {name!r} is registered twice")
    if not variants:
        raise ValueError(f"family {name!r} declares no variants")
    table = dict(converters or {})
    if converter is not None:
        if table.setdefault("official", converter) is not converter:
            raise ValueError(f"family {name!r}: give the official converter as converter= or in converters=, not both")
    fam = Family(name, model, paper, spec, table.get("official"), tuple(variants), table)
    shared = _check_card(card or Card(), "register_family(card=...)").declared()
    entries = {}
    for vname, v in variants.items():
        fields_ = {**shared, **v.card.declared()}
        if vname in _MODELS or vname in _ALIASES or vname in entries:
            raise ValueError(f"model {vname!r} is registered twice")
        cfg = PretrainedCfg(**{k: fields_.pop(k) for k in list(fields_) if k in _CFG_FIELDS})
        fields_.setdefault("timm_name", vname if timm else None)
        fields_.setdefault("repo", paper.repo)
        entries[vname] = _Entry(fam, {**(arch or {}), **v.arch}, ModelCard(name=vname, family=name, paper=paper.title,
                                                       arxiv=paper.arxiv, pretrained_cfg=cfg, **fields_))
    for vname, v in variants.items():
        _MODELS[vname] = entries[vname]
        for alias in v.aliases:
            if alias in _MODELS or alias in _ALIASES:
                raise ValueError(f"alias {alias!r} is registered twice")
            _ALIASES[alias] = vname
    _FAMILIES[name] = fam
    return fam


def official_converter(family: str, source: str = "official") -> Callable[[dict, nn.Module], dict] | None:
    """The converter of a registered family for checkpoints from `source` ("official": the official repository;
    "transformers": Hugging Face transformers), None when it has none."""
    fam = _FAMILIES.get(family)
    return fam.converters.get(source) if fam is not None else None


def family_of(name: str) -> Family:
    """The Family a registered model (or alias) belongs to."""
    return _MODELS[resolve_name(name)].family


def model_arch(name: str) -> dict[str, Any]:
    """The constructor arguments a registered variant is built with (before create_model's own)."""
    return dict(_MODELS[resolve_name(name)].arch)


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message suggests the closest names."""


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
    return sorted(_FAMILIES)


def model_card(name: str) -> ModelCard:
    """The ModelCard of a registered model (aliases accepted)."""
    return _MODELS[resolve_name(name)].card


def model_traits(name: str, **kwargs: Any) -> ModelTraits:
    """The ModelTraits of a registered model (aliases accepted) built with constructor keyword arguments `kwargs`
    (as `create_model(name, **kwargs)` would), from the family's declaration: nothing is built. TypeError for an
    argument the constructor does not take."""
    entry = _MODELS[resolve_name(name)]
    model = entry.family.model
    params = inspect.signature(model).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"{name}: unknown constructor option(s) {unknown}")
    return traits_of_arguments(model, {**entry.arch, **kwargs})


#: Largest num_classes and in_chans create_model accepts.
MAX_CLASSES = 100_000
MAX_IN_CHANS = 1024


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _shown(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def check_create_arguments(num_classes: Any, in_chans: Any, drop_path_rate: Any, kwargs: Mapping[str, Any]) -> None:
    """Raise TypeError / ValueError, one line naming the argument, what it takes and what was given, for a
    create_model argument no model can be built with."""
    if not _is_int(num_classes):
        raise TypeError(f"num_classes must be an int in [0, {MAX_CLASSES}] (0 removes the classifier); got "
                        f"{_shown(num_classes)}")
    if not 0 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be an int in [0, {MAX_CLASSES}] (0 removes the classifier); got "
                         f"{num_classes}")
    if not _is_int(in_chans):
        raise TypeError(f"in_chans must be an int in [1, {MAX_IN_CHANS}]; got {_shown(in_chans)}")
    if not 1 <= in_chans <= MAX_IN_CHANS:
        raise ValueError(f"in_chans must be an int in [1, {MAX_IN_CHANS}]; got {in_chans}")
    if drop_path_rate is not None:
        if not isinstance(drop_path_rate, numbers.Real) or isinstance(drop_path_rate, bool):
            raise TypeError(f"drop_path_rate must be a finite float in [0, 1) or None; got {_shown(drop_path_rate)}")
        if not (math.isfinite(drop_path_rate) and 0 <= drop_path_rate < 1):
            raise ValueError(f"drop_path_rate must be a finite float in [0, 1) or None; got {drop_path_rate}")
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        pair = isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(v) for v in size)
        if not (_is_int(size) or pair):
            raise TypeError(f"img_size must be an int or a pair of ints (H, W); got {_shown(size)}")
        if min(size if pair else (size,)) < 1:
            raise ValueError(f"img_size must be positive; got {size}")


def create_model(name: str, *, pretrained: bool | str | os.PathLike | None = None, num_classes: int = 1000,
                 in_chans: int = 3,
                 drop_path_rate: float | None = None, features_only: bool = False,
                 out_indices: tuple[int, ...] | None = None, deploy: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model (timm's signature).

    pretrained: trained weights, loaded before any feature extraction wrapping: True (the variant's default
        release, docs/weights.md), a release tag ("fb_in1k" or "convnext_tiny.fb_in1k"), "hf-hub:org/repo", a URL,
        or a local safetensors / weights-only torch file (timm's, the official repository's or ours). Downloads go
        to the standard caches (HF_HOME, TORCH_HOME). A classifier for another `num_classes` is re-initialised and
        an input convolution for another `in_chans` adapted, each said in one logged line.
    drop_path_rate: stochastic depth for training; None means 0 (the ModelCard has the paper's value).
    features_only: return a backbone whose forward gives the stage maps selected by `out_indices`.
    deploy: build the re-parameterised inference form (merged kernels, folded BatchNorms). It is built in its
        train form and re-parameterised in place; `pretrained` may hold the train form, our deploy form or an
        official (partial) deploy form: the model is first brought to the checkpoint's form, loaded strictly,
        then fully re-parameterised.
    Other keyword arguments go to the family's constructor.
    """
    from .features import FeatureExtractor
    from .weights import load_checkpoint

    entry = _MODELS[resolve_name(name)]
    check_create_arguments(num_classes, in_chans, drop_path_rate, kwargs)
    if pretrained is not None and not isinstance(pretrained, (bool, str)) and not hasattr(pretrained, "__fspath__"):
        raise TypeError("pretrained must be True, a release tag, 'hf-hub:org/repo', a URL or a file path; "
                        f"got {type(pretrained).__name__}")
    model = entry.build(num_classes=num_classes, in_chans=in_chans,
                          drop_path_rate=0.0 if drop_path_rate is None else float(drop_path_rate), **kwargs)
    card = entry.card
    model.model_name = card.name
    model.card = card
    model.pretrained_cfg = dict(  # what timm's data helpers read
        card.pretrained_cfg.to_dict(), num_classes=num_classes, **transfer_names(model, num_classes, in_chans))
    if deploy and pretrained not in (None, False, True) and Path(os.fspath(pretrained)).is_file():
        load_checkpoint(model, pretrained, match_reparam_form=True)   # a file in any form (train, deploy, official)
    elif pretrained not in (None, False):
        from .pretrained import load_pretrained

        load_pretrained(model, card.name, pretrained, num_classes=num_classes, in_chans=in_chans)
    if deploy:
        reparameterize_(model)
    if features_only:
        model = FeatureExtractor(model, out_indices)
    return model


def transfer_names(model: nn.Module, num_classes: int, in_chans: int) -> dict[str, str | tuple[str, ...] | None]:
    """timm's `first_conv` and `classifier` of a built model: the dense convolutions that read the image and the
    head's Linear layers that give class scores (one name as a string, several as a tuple)."""
    convs = tuple(n for n, m in model.named_modules()
                  if isinstance(m, nn.Conv2d) and m.in_channels == in_chans and m.groups == 1)
    heads = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
                  and "head" in n)

    def one(names: tuple[str, ...]) -> str | tuple[str, ...] | None:
        return None if not names else names[0] if len(names) == 1 else names

    return {"first_conv": one(convs), "classifier": one(heads)}


def resolve_model(model: nn.Module | str, *, device: str | None = None, what: str = "model") -> tuple[nn.Module, str]:
    """(module, name) for an nn.Module or a registered model name.

    A name is built with `create_model` (on `device`, e.g. "meta" for counting without memory; None: the default
    device); a module passes through unchanged, named by its `model_name` or class. ValueError for anything else,
    naming `what` the caller expected.
    """
    if isinstance(model, str):
        name = resolve_name(model)
        if device is None:
            return create_model(name), name
        with torch.device(device):
            return create_model(name), name
    if not isinstance(model, nn.Module):
        raise ValueError(f"{what} must be an nn.Module or a registered model name; got {type(model).__name__}")
    return model, getattr(model, "model_name", type(model).__name__)


def _unregister_family(name: str) -> None:
    """Remove a family and its variants (for tests that register a throw-away family)."""
    fam = _FAMILIES.pop(name)
    for vname in fam.variants:
        del _MODELS[vname]
    for alias in [a for a, target in _ALIASES.items() if target in fam.variants]:
        del _ALIASES[alias]
