"""The "materialize" deploy transform: operators whose kernels are *generated* from a parametrisation
(TVConv's weight-generating block, SGConv's multi-scale sub-kernels, DCLS's interpolated positions) compute them
once and keep them as buffers, so inference runs a plain (per-position / dense) convolution.

Unlike structural re-parameterisation ("reparameterize": merged branches, folded BatchNorms, never more
parameters), the materialised kernel may hold more numbers than its parametrisation (a 17x17 DCLS kernel from
34 taps): it trades storage for speed and keeps the outputs exactly. A module takes part by implementing an
idempotent in-place `materialize()` and a `deployed` flag.

    deployed = convscope.deploy.transform(model, "reparameterize", "materialize")
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .transform import ModelTransform, register_transform


def _materializable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if callable(getattr(m, "materialize", None))]


def materialize_(model: nn.Module) -> nn.Module:
    """Materialise every generated kernel of `model` in place (idempotent); returns `model`."""
    for _, m in _materializable(model):
        m.materialize()
    return model


class Materialize(ModelTransform):
    """Generated kernels computed once and kept as buffers (TVConv, SGConv, DCLS)."""

    name = "materialize"

    def apply(self, model: nn.Module) -> nn.Module:
        return materialize_(model)

    def applies_to(self, model: nn.Module) -> bool:
        return any(not getattr(m, "deployed", False) for _, m in _materializable(model))

    def match_checkpoint(self, model: nn.Module, keys: Iterable[str]) -> nn.Module:
        keys = set(keys)
        for name, m in _materializable(model):
            own = {k for k in m.state_dict(prefix=f"{name}." if name else "", keep_vars=True)}
            if not own <= keys:  # the checkpoint holds the materialised form of this module
                m.materialize()
        return model


MATERIALIZE = register_transform(Materialize())
