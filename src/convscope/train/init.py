"""Starting a run from weights instead of a random init (`TrainConfig.init_from`, `convscope train --init-from`).

Two kinds of file are accepted:

- a pruned model written by `convscope.deploy.prune.save_pruned`: its metadata holds the pruning spec (the
  registered model and, per MLP group, the hidden width it keeps). The run's freshly built model is given those
  widths (`convscope.models.pruning.apply_spec_`) and the weights are loaded strictly; this is how a pruned model
  is fine-tuned;
- a weights file written by `convscope train` (best.safetensors, last.safetensors, a checkpoint's
  model.safetensors): loaded strictly, with the pruned widths of its run when it was itself a pruned run;
- a pre-trained encoder written by `convscope pretrain` (encoder.safetensors, metadata `"encoder": true`): every
  weight but the classifier's, loaded strictly; the run's classifier keeps its fresh initialisation.

Either way the file must describe the run's model, classes and input channels, else ValueError naming what
differs. The returned spec (or None) goes into the run's metadata (`meta["pruning"]`), so that every weights file
the run writes rebuilds with `load_model` (evaluate, predict, optimize, export) at the pruned widths.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from ..models.pretrained.adapt import transfer_layers
from ..models.pruning import PRUNING_KEY, apply_spec_
from ..models.registry import model_card
from ..models.source import META_KEY, check_finite, file_metadata, is_pruned, read_meta

ENCODER = "pre-trained encoder"


def _described(path: Path) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(what the file is, its model / num_classes / in_chans, its pruning spec or None), all checked."""
    raw = file_metadata(path, "--init-from")
    if PRUNING_KEY in raw:
        spec = is_pruned(path)
        return "pruned model", {k: spec.get(k) for k in ("model", "num_classes", "in_chans")}, spec
    if META_KEY in raw:
        meta = read_meta(path)
        spec = dict(meta["pruning"]) if meta.get("pruning") else None
        if meta.get("encoder") is True:
            return ENCODER, {k: meta[k] for k in ("model", "in_chans")}, None
        return "convscope weights file", {k: meta[k] for k in ("model", "num_classes", "in_chans")}, spec
    raise ValueError(f"--init-from: {path} holds neither a pruning spec (deploy.prune.save_pruned) nor convscope "
                     "metadata (a weights file written by convscope train)")


def init_from_(model: nn.Module, path: str | os.PathLike, *, model_name: str, num_classes: int,
               in_chans: int) -> dict[str, Any] | None:
    """Load the weights of `path` into the run's `model` in place (reshaping it first when the file is pruned);
    returns the pruning spec, or None for an unpruned model."""
    path = Path(path)
    what, got, spec = _described(path)
    got["model"] = model_card(got["model"]).name
    want = dict(model=model_name, in_chans=in_chans, **({} if what == ENCODER else dict(num_classes=num_classes)))
    differ = [f"{k} {got[k]!r} (the run: {want[k]!r})" for k in want if got[k] not in (want[k], None)]
    if differ:
        raise ValueError(f"--init-from: {path} is a {what} of another model: " + ", ".join(differ))
    if spec:
        apply_spec_(model, spec)
    own = model.state_dict()
    sd = load_file(str(path))
    if what == ENCODER:   # no classifier in the file (nor, from SparK, the head's norm): the run's stay fresh
        heads = set(transfer_layers(model_name)[1])
        own = {k: v for k, v in own.items()
               if k.rpartition(".")[0] not in heads and (k in sd or not k.startswith("head."))}
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    shapes = [k for k in set(own) & set(sd) if own[k].shape != sd[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", sorted(shapes))) if keys]
        raise ValueError(f"--init-from: {path} does not fit {model_name}: weights " + "; ".join(parts))
    check_finite(sd, f"--init-from: {path}")
    model.load_state_dict(sd, strict=what != ENCODER)
    return spec
