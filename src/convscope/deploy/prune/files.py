"""A pruned model on disk: safetensors whose metadata holds its pruning spec (under `PRUNING_KEY`). Reading one
back (`is_pruned`, `load_pruned`) is `convscope.models.source`, below train/ and deploy/, which both rebuild pruned
models."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ...models.pruning import PRUNING_KEY, check_pruning_spec
from ...models.weights import save_weights


def save_pruned(model: nn.Module, spec: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the pruned `model` and its `spec` (see `pruning_spec`) as one safetensors file, atomically."""
    check_pruning_spec(spec, "save_pruned")
    return save_weights(model, path, metadata={PRUNING_KEY: json.dumps(spec)})
