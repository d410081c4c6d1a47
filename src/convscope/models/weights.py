"""Reading, writing and loading weights. Nothing is ever unpickled beyond tensors and plain containers."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_path
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


def _describe_mismatch(model_name: str, sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                       ignore_unexpected: bool) -> str | None:
    missing = [k for k in own if k not in sd]
    unexpected = [] if ignore_unexpected else [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in sd and sd[k].shape != v.shape]
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


def load_checkpoint(model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                    source: str = "auto", strict: bool = True, match_reparam_form: bool = False) -> nn.Module:
    """Load weights into `model` in place and return it.

    source: "timm" (timm's keys, which are ours for the families timm carries), "official" (the official
    repository's keys, mapped by the family's converter), "transformers" (Hugging Face transformers' keys, for
    the families that declare a converter for them) or "auto" (ours/timm's if they fit, else official).
    match_reparam_form: first re-parameterise the parts of `model` that the checkpoint holds in re-parameterised
    form (see `convscope.deploy.reparam.match_reparam_form_`); `create_model(..., deploy=True)` uses this.
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

    if source == "timm":
        if card is not None and card.timm_name is None:
            raise ValueError(f"timm does not carry {name} ({family}); load it with source='official' or 'auto'")
    elif source in ("official", "transformers"):
        if converter is None:
            raise ValueError(f"no {source}-checkpoint converter for {name} ({family or 'unknown family'})")
        sd = converter(dict(sd), target)
    elif converter is not None and not set(own) <= set(sd):
        sd = converter(dict(sd), target)
    if match_reparam_form:
        from ..deploy.reparam import REPARAMETERIZE  # lazy: deploy/ sits above models/
        REPARAMETERIZE.match_checkpoint(target, sd)
        own = target.state_dict()

    problem = _describe_mismatch(name, sd, own, ignore_unexpected=isinstance(model, FeatureExtractor))
    if problem and strict:
        raise ValueError(problem)
    # A model built on the meta device takes the checkpoint's tensors as its own (no second copy in memory).
    assign = any(t.is_meta for t in own.values())
    target.load_state_dict({k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}, strict=False,
                           assign=assign)
    return model
