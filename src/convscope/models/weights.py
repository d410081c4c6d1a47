"""Reading, writing and loading weights. Nothing is ever unpickled beyond tensors and plain containers."""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_path
from ..layers.reparam import is_reparameterizable, match_reparam_form_, reparameterize_
from .registry import official_converter

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a weights-only torch file (`torch.load(weights_only=True)`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    is_torch = head[:2] == b"PK" or head[:1] == b"\x80"  # zip archive or legacy pickle
    if path.suffix == ".safetensors" or not is_torch:
        try:
            return load_file(str(path))
        except Exception as e:
            raise ValueError(f"{path} is neither a safetensors file nor a torch checkpoint ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as e:
        raise ValueError(f"{path} holds more than tensors and plain containers; convscope only loads weights "
                         f"(safetensors, or torch files readable with weights_only=True): {e}") from None
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: object, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in a training checkpoint ({'model': ...}, {'state_dict': ...}, ...), strip DDP and
    torch.compile prefixes."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{where} does not contain a state dict (a mapping of names to tensors)")
    out = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def save_weights(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically: a temporary file in the same directory, fsync, then rename."""
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


class IncompatibleKeys(NamedTuple):
    """What `load_checkpoint(..., strict=False)` returns, like torch's `load_state_dict`: the model's keys the
    checkpoint did not fill (left at their initial values), the checkpoint's keys the model has no place for, and
    keys present in both with different shapes (also left at their initial values). Keys are spelled as the
    checkpoint spells them where it has them (an official checkpoint's own keys), else as the model does."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    mismatched_keys: list[str]


def _official_spelling(converted: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """ours -> the checkpoint's key, for every converted tensor that is (a view of) one of the checkpoint's."""
    by_id = {}
    for k, v in original.items():
        by_id.setdefault(id(v), k)
    names = {}
    for k, v in converted.items():
        src = by_id.get(id(v)) or (by_id.get(id(v._base)) if v._base is not None else None)
        if src is not None:
            names[k] = src
    return names


def _guess_spelling(key: str, names: Mapping[str, str]) -> str | None:
    """The checkpoint's spelling of `key` (one of ours it lacks), from a sibling it has: ours `P.a` is official
    `Q.a` when ours `P.b` came from official `Q.b` (e.g. a missing `.weight` beside a present `.bias`)."""
    prefix, _, leaf = key.rpartition(".")
    for ours, theirs in names.items():
        p2, _, leaf2 = ours.rpartition(".")
        if p2 == prefix and theirs.endswith("." + leaf2):
            return theirs[:-len(leaf2)] + leaf
    return None


def _mismatch(sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], ignore_unexpected: bool,
              names: Mapping[str, str] | None) -> IncompatibleKeys:
    """The incompatible keys, spelled as the checkpoint spells them where it can be told (`names`: ours ->
    the checkpoint's, for a converted official checkpoint)."""
    def theirs(k: str) -> str:
        if names is None:
            return k
        if k in names:
            return names[k]
        guess = _guess_spelling(k, names)
        if guess == k:
            return k
        return f"{guess} (convscope: {k})" if guess else f"{k} (convscope's name; no official key maps to it)"

    missing = [theirs(k) for k in own if k not in sd]
    unexpected = [] if ignore_unexpected else [theirs(k) for k in sd if k not in own]
    shapes = [f"{theirs(k)}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    return IncompatibleKeys(missing, unexpected, shapes)


def _describe_mismatch(model_name: str, keys: IncompatibleKeys) -> str | None:
    missing, unexpected, shapes = keys
    if not (missing or unexpected or shapes):
        return None

    def some(items: list[str]) -> str:
        return ", ".join(items[:4]) + (f", ... ({len(items) - 4} more)" if len(items) > 4 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({some(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({some(shapes)})")
    return f"checkpoint does not fit {model_name}: " + "; ".join(parts)


def _through_train_form(target: nn.Module, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """For a model already in deploy form (`create_model(name, deploy=True)`) and a checkpoint in the train form or
    an official code's partial deploy form (e.g. RepLKNet's merged kernels with BatchNorms kept): load the
    checkpoint into a train-form twin brought to the checkpoint's form, re-parameterise the twin fully, and return
    its state dict when it has exactly the target's keys and shapes; None when that does not work out."""
    from .registry import create_model

    try:
        meta = any(v.is_meta for v in sd.values())
        with torch.device("meta" if meta else "cpu"):
            twin = create_model(target.model_name, num_classes=getattr(target, "num_classes", 1000),
                                in_chans=getattr(target, "in_chans", 3))
        if not is_reparameterizable(twin):
            return None
        match_reparam_form_(twin, sd)
        own = twin.state_dict()
        if set(own) != set(sd) or any(own[k].shape != sd[k].shape for k in own):
            return None
        twin.load_state_dict(dict(sd), assign=meta)
        reparameterize_(twin.eval())
        got, want = twin.state_dict(), target.state_dict()
        if set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
            return None
        return dict(got)
    except Exception:  # any failure: the caller reports the original mismatch
        return None


def load_checkpoint(model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                    source: str = "auto", strict: bool = True,
                    match_reparam_form: bool = False) -> nn.Module | IncompatibleKeys:
    """Load weights into `model` in place.

    strict=True (the default): every key must fit, else ValueError naming the keys as the checkpoint spells them;
    returns `model`. strict=False: loads what fits and returns `IncompatibleKeys(missing_keys, unexpected_keys,
    mismatched_keys)` as torch's `load_state_dict` does, so that the tensors left at their initial values are
    visible.
    source: "timm" (timm's keys, which are ours for the families timm carries), "official" (the official
    repository's keys, mapped by the family's converter), "transformers" (Hugging Face transformers' keys, for
    the families that declare a converter for them) or "auto" (ours/timm's if they fit, else official).
    match_reparam_form: first re-parameterise the parts of `model` that the checkpoint holds in re-parameterised
    form (see `convscope.layers.reparam.match_reparam_form_`); `create_model(..., deploy=True)` uses this.
    """
    if source not in ("auto", "timm", "official", "transformers"):
        raise ValueError(f"source must be 'auto', 'timm', 'official' or 'transformers'; got {source!r}")
    if isinstance(path_or_state_dict, Mapping):
        sd = unwrap_state_dict(path_or_state_dict)
    else:
        sd = read_state_dict(path_or_state_dict)

    from .features import FeatureExtractor  # a features_only model loads into its backbone
    target = model.model if isinstance(model, FeatureExtractor) else model
    name = getattr(target, "model_name", type(target).__name__)
    card = getattr(target, "card", None)
    family = card.family if card is not None else None
    own = target.state_dict()
    converter = official_converter(family, "official" if source == "auto" else source) if family else None

    names = None
    if source == "timm":
        if card is not None and card.timm_name is None:
            raise ValueError(f"timm does not carry {name} ({family}); load it with source='official' or 'auto'")
    elif source in ("official", "transformers") or (converter is not None and not set(own) <= set(sd)):
        if converter is None:
            raise ValueError(f"no {source}-checkpoint converter for {name} ({family or 'unknown family'})")
        original = dict(sd)
        converted = converter(dict(sd), target)
        # "auto": the official layout only when it fits better (our own deploy-form checkpoint also misses keys of
        # a train-form model, and a converter need not leave our keys alone)
        if source != "auto" or len(set(converted) & set(own)) > len(set(original) & set(own)):
            sd = converted
            names = _official_spelling(sd, original) if set(sd) != set(original) else None
    if match_reparam_form:
        match_reparam_form_(target, sd)
        own = target.state_dict()

    keys = _mismatch(sd, own, isinstance(model, FeatureExtractor), names)
    problem = _describe_mismatch(name, keys)
    if problem and not match_reparam_form and card is not None and (keys.missing_keys or keys.unexpected_keys):
        twin = _through_train_form(target, sd)   # a deploy-form model and a checkpoint in another (partial) form
        if twin is not None:
            sd, problem, keys = twin, None, IncompatibleKeys([], [], [])
    if problem and strict:
        raise ValueError(problem)
    # A model built on the meta device takes the checkpoint's tensors as its own (no second copy in memory).
    assign = any(t.is_meta for t in own.values())
    target.load_state_dict({k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}, strict=False,
                           assign=assign)
    return keys if not strict else model
