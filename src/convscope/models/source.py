"""Where a model comes from, read in one place below train/ and deploy/: a registered name, a self-describing
weights file (`save_model_file`: a run's best/last weights, a checkpoint's, an optimised model), a run or
checkpoint directory, or a pruned model (`convscope.deploy.prune.save_pruned`).

Nothing is built before the file's description is checked: the model name must be registered (a long or garbage
string is refused in one line, cut to 80 characters), `model_kwargs` must be the variant's own constructor
arguments with bounded values (no depth above MAX_DEPTH, no integer above MAX_WIDTH), a pruning spec must be
well formed, and the architecture built on the meta device (no memory) must have exactly the file's tensor names
and shapes. Tensors that are not finite (NaN, infinity) are refused at load, naming the file and the first one.
"""
from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ..layers.fold import prepare_for_inference_
from .pruning import PRUNING_KEY, apply_spec_, check_pruning_spec
from .registry import UnknownModelError, create_model, family_of, model_card, resolve_name
from .weights import save_weights

META_KEY = "convscope"
WEIGHTS_FORMAT = "convscope-weights/1"
FORMS = ("train", "prepare")   # a model file's weights: as trained, or re-parameterised with BatchNorms folded
MAX_DEPTH = 1000      # blocks in one stage
MAX_WIDTH = 65536     # any integer constructor argument (channels, heads, kernel sizes)
MAX_ITEMS = 4096      # entries of a list argument
_SHOWN = 80           # characters of a user's value quoted in a message
_CREATE_KEYS = ("num_classes", "in_chans", "drop_path_rate")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + f"... ({len(text)} characters)"


# -- checks before anything is built ---------------------------------------------------------------------------
def check_model_name(name: object, where: str) -> str:
    """The registered name `name` stands for; ValueError in one line (the name cut short) otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"{where}: the model name must be a string; got {type(name).__name__}")
    if len(name) > 200:
        raise ValueError(f"{where}: unknown model {_short(name)}: not a registered model name")
    try:
        return resolve_name(name)
    except UnknownModelError as e:
        raise ValueError(f"{where}: {e}") from None


def _bounded(value: object, key: str, where: str) -> None:
    """Plain JSON values only: integers within MAX_WIDTH, lists and mappings within MAX_ITEMS, numbers finite."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > MAX_WIDTH:
            raise ValueError(f"{where}: model_kwargs {key!r} holds {value}, above the largest accepted "
                             f"{MAX_WIDTH}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: model_kwargs {key!r} holds a non-finite number")
    elif isinstance(value, str):
        if len(value) > 200:
            raise ValueError(f"{where}: model_kwargs {key!r} holds a string of {len(value)} characters")
    elif isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"{where}: model_kwargs {key!r} holds {len(value)} entries (at most {MAX_ITEMS})")
        for v in value:
            _bounded(v, key, where)
    elif isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"{where}: model_kwargs {key!r} holds {len(value)} entries (at most {MAX_ITEMS})")
        for k, v in value.items():
            _bounded(k, key, where)
            _bounded(v, key, where)
    else:
        raise ValueError(f"{where}: model_kwargs {key!r} must hold numbers, strings, lists or mappings; got "
                         f"{type(value).__name__}")


def check_model_kwargs(name: str, kwargs: object, where: str) -> dict[str, Any]:
    """`kwargs` when they are constructor arguments of `name`'s family with bounded values; else ValueError."""
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{where}: model_kwargs must be a mapping of constructor arguments; got "
                         f"{type(kwargs).__name__}")
    family = family_of(name)
    params = inspect.signature(family.model).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if not isinstance(k, str) or k in _CREATE_KEYS or (k not in params and not takes_any)]
    if unknown:
        raise ValueError(f"{where}: model_kwargs {_short(unknown)} are not constructor arguments of {name}")
    depths_key = family.spec.depths if family.spec is not None else "depths"
    depths = kwargs.get(depths_key)
    if depths is not None:
        flat = depths if isinstance(depths, (list, tuple)) else [depths]
        if any(not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= MAX_DEPTH for d in flat):
            raise ValueError(f"{where}: model_kwargs {depths_key!r} must be block counts from 0 to {MAX_DEPTH}; "
                             f"got {_short(depths)}")
    for key, value in kwargs.items():
        _bounded(value, key, where)
    return dict(kwargs)


def _check_meta(meta: dict[str, Any], path: Path, registered: bool = True) -> None:
    """ValueError naming the file and the field when the model description is incomplete or impossible (e.g.
    hand-edited); with `registered`, the model must be a registered name and its kwargs that family's."""
    def positive_ints(v, n):
        return isinstance(v, list) and len(v) == n and all(isinstance(x, int) and 1 <= x <= MAX_WIDTH for x in v)

    def numbers(v, n):
        return isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) and math.isfinite(x)
                                                           for x in v)

    checks = {
        "model": lambda v: isinstance(v, str),
        "num_classes": lambda v: isinstance(v, int) and 1 <= v <= 1_000_000,
        "in_chans": lambda v: v in (1, 3),
        "input_size": lambda v: positive_ints(v, 2),
        "load_size": lambda v: positive_ints(v, 2),
        "crop_pct": lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
        "mean": lambda v: numbers(v, meta.get("in_chans")),
        "std": lambda v: numbers(v, meta.get("in_chans")) and all(x > 0 for x in v),
        "class_names": lambda v: isinstance(v, list) and len(v) == meta.get("num_classes")
        and all(isinstance(x, str) for x in v),
        "model_kwargs": lambda v: isinstance(v, dict),
        "form": lambda v: v in FORMS,
    }
    for key, ok in checks.items():
        if key not in meta:
            if key in ("model_kwargs", "form"):
                continue
            raise ValueError(f"{path}: the convscope metadata lacks {key!r}")
        if not ok(meta[key]):
            raise ValueError(f"{path}: the convscope metadata has an impossible {key!r}: {_short(meta[key])}")
    if registered:
        meta["model"] = check_model_name(meta["model"], str(path))
        meta["model_kwargs"] = check_model_kwargs(meta["model"], meta.get("model_kwargs", {}), str(path))
    if meta.get("pruning"):
        check_pruning_spec(meta["pruning"], str(path))


# -- self-describing weights files -------------------------------------------------------------------------------
def save_model_file(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Weights plus the model description (`meta`: model name, classes, input size, ...) in one safetensors."""
    return save_weights(state_dict, path, metadata={META_KEY: json.dumps(dict(meta, format=WEIGHTS_FORMAT))})


def file_metadata(path: Path, where: str = "") -> dict[str, str]:
    """A safetensors file's string metadata; FileNotFoundError / ValueError in one line (prefixed by `where`, e.g.
    the flag that named the file) when there is no such file or it is not safetensors."""
    prefix = f"{where}: " if where else ""
    if not path.is_file():
        raise FileNotFoundError(f"{prefix}no {'weights' if where else 'checkpoint'} file at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors' own error types
        raise ValueError(f"{prefix}{path} is not a safetensors file ({e})") from None


def read_meta(path: str | os.PathLike, *, registered: bool = True) -> dict[str, Any]:
    """The model description stored by `save_model_file`, checked; ValueError if the file has none or it does not
    hold. `registered=False` reads a training checkpoint's, whose model the resuming run builds from its own
    config (a task's model need not be a registered name)."""
    path = Path(path)
    raw = file_metadata(path).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path} has no convscope metadata: give a weights file written by `convscope train` "
                         "(best.safetensors, last.safetensors or a checkpoint's model.safetensors)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: its convscope metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its convscope metadata is not a JSON object")
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {_short(meta.get('format'))}; expected "
                         f"{WEIGHTS_FORMAT}")
    _check_meta(meta, path, registered)
    return meta


def is_pruned(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checked pruning spec of a safetensors file written by `save_pruned`; None for any other file or path."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".safetensors"):
        return None
    try:
        raw = file_metadata(p).get(PRUNING_KEY)
    except ValueError:  # not a safetensors file: the caller's loader says so
        return None
    if raw is None:
        return None
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: its pruning spec is not valid JSON ({e})") from None
    check_pruning_spec(spec, str(p))
    spec["model"] = check_model_name(spec["model"], str(p))
    spec["model_kwargs"] = check_model_kwargs(spec["model"], spec.get("model_kwargs", {}), str(p))
    return spec


def resolve_weights_file(path: str | os.PathLike) -> Path:
    """A weights file from what a user may pass: the file itself, a run directory (its best, else last,
    weights) or a checkpoint directory (its EMA weights if present, else the model's)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors", "ema.safetensors", "model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds no best/last/ema/model .safetensors weights")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    return path


# -- building what a file describes ------------------------------------------------------------------------------
def check_finite(state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """ValueError naming `where` and the first tensor holding NaN or infinity."""
    for key, t in state_dict.items():
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: tensor {key!r} holds NaN or infinity; refusing non-finite weights")


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _shape(model: nn.Module, spec: dict[str, Any] | None, form: str) -> nn.Module:
    """The pruned widths of `spec`, then the inference form when the file holds it; in place."""
    if spec:
        apply_spec_(model, spec)
    return prepare_for_inference_(model) if form == "prepare" else model


def _build(path: Path, name: str, kwargs: dict[str, Any], spec: dict[str, Any] | None,
           form: str = "train") -> nn.Module:
    """The model the file describes, with its weights: the architecture is first built on the meta device and
    compared with the file's tensor names and shapes, and only then built for real and loaded strictly."""
    with torch.device("meta"):
        probe = create_model(name, **kwargs)
    _shape(probe, spec, form)   # outside the device context: the group discovery runs small probes on the CPU
    own = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    held = _file_shapes(path)
    if own != held:
        missing, extra = sorted(set(own) - set(held)), sorted(set(held) - set(own))
        shapes = sorted(k for k in set(own) & set(held) if own[k] != held[k])
        parts = [f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}" for label, keys in
                 (("missing", missing), ("unexpected", extra), ("of another shape", shapes)) if keys]
        raise ValueError(f"{path}: its weights do not fit the {name} its metadata describes: " + "; ".join(parts))
    sd = load_file(str(path))
    check_finite(sd, str(path))
    saved = probe.state_dict().keys()
    if any(n not in saved for n, _ in probe.named_buffers()):   # buffers computed at build time: build for real
        model = create_model(name, **kwargs)
    else:                                                        # every tensor comes from the file: skip the init
        model = probe.to_empty(device="cpu")
    if model is not probe:
        _shape(model, spec, form)
    model.load_state_dict(sd, strict=True)
    return model


def _build_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(meta.get("model_kwargs") or {})
    kwargs.update({k: meta[k] for k in ("num_classes", "in_chans") if meta.get(k) is not None})
    return kwargs


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a pruned model from its safetensors file: create_model(name) shaped by the spec, weights strict, eval
    mode."""
    spec = is_pruned(path)
    if spec is None:
        raise ValueError(f"{path} holds no pruning spec (not written by save_pruned)")
    return _build(Path(path), spec["model"], _build_kwargs(spec), spec).eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained model from its weights file alone: (model in eval mode, its description)."""
    path = resolve_weights_file(path)
    meta = read_meta(path)
    try:
        model = _build(path, meta["model"], _build_kwargs(meta), meta.get("pruning") or None,
                       meta.get("form", "train"))
    except TypeError as e:
        raise ValueError(f"{path}: the convscope metadata does not describe a model this version can build "
                         f"({type(e).__name__}: {str(e)[:_SHOWN]})") from None
    return model.to(map_location).eval(), meta


def _card_meta(name: str, num_classes: int, in_chans: int) -> dict[str, Any]:
    """A model description from the variant's card: its preprocessing, classes named by index."""
    cfg = model_card(name).pretrained_cfg
    size = [int(s) for s in cfg.input_size[1:]]
    mean, std = list(cfg.mean), list(cfg.std)
    if in_chans != len(mean):
        mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
    return dict(model=name, num_classes=num_classes, in_chans=in_chans, input_size=size,
                load_size=[round(s / cfg.crop_pct) for s in size], crop_pct=cfg.crop_pct, mean=mean, std=std,
                class_names=[f"class_{i}" for i in range(num_classes)], model_kwargs={})


def source_meta(source: str | os.PathLike, form: str = "train") -> dict[str, Any]:
    """The model description of what `load_source(source)` builds, for a model file holding its weights in `form`
    ("train" or "prepare"): a checkpoint's own description; for a pruned model or a bare name, the card's
    preprocessing, with classes named by index."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}; got {_short(form)}")
    text = str(source)
    spec = is_pruned(text) if Path(text).exists() else None
    if spec:
        meta = _card_meta(spec["model"], spec.get("num_classes") or 1000, spec.get("in_chans") or 3)
        meta.update(model_kwargs=spec.get("model_kwargs") or {}, pruning=spec)
    elif Path(text).exists():
        meta = {k: v for k, v in read_meta(resolve_weights_file(text)).items() if k != "format"}
    else:
        meta = _card_meta(check_model_name(text, "model"), 1000, 3)
    return dict(meta, form=form)


def load_source(source: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """A model from a registered name (random init), a trained checkpoint (weights file, run or checkpoint
    directory) or a pruned model file: (eval-mode model, {chw: (C, H, W), meta: the file's description or None,
    pruned: whether it is a pruned model})."""
    text = str(source)
    if not Path(text).exists():
        if text.endswith(".safetensors") or os.sep in text:
            raise ValueError(f"no checkpoint at {_short(text)[1:-1]} (and it is not a registered model name)")
        name = check_model_name(text, "model")
        return create_model(name).eval(), dict(chw=tuple(model_card(name).input_size), meta=None, pruned=False)
    spec = is_pruned(text)
    if spec:
        chw = (spec.get("in_chans") or 3, *model_card(spec["model"]).input_size[1:])
        return load_pruned(text), dict(chw=tuple(chw), meta=None, pruned=True)
    model, meta = load_model(text)
    return model, dict(chw=(meta["in_chans"], *meta["input_size"]), meta=meta, pruned=bool(meta.get("pruning")))
