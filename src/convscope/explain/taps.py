"""Where explanations look inside a model: a layer named by a feature_info index or a module name, resolved to the
module to hook and the function that turns what it outputs (or the gradient of that) into an NCHW map.

Token models state their own taps: a `TokenModel` converts a unit's state to a map with `model.tap` (class
tokens dropped, patch tokens laid back on their grid), CvT's stages with `tokens_to_map`. Those are reused here
rather than guessing a grid from a token count. Both are selections and reshapes, so they apply to a gradient as
they do to an activation.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

ToMap = Callable[[Any], torch.Tensor]

#: Families that classify from a class token which the patch tokens of their last tap no longer reach (the last
#: block's patch outputs are discarded): their default CAM layer is the input of the last block.
_CLASS_TOKEN_LAST = ("ConViT", "CrossViT", "CvT")


@dataclass(frozen=True)
class LayerTap:
    """A resolved layer: the module to hook, its description, and `to_map(output)` -> (B, C, h, w)."""

    name: str
    module: nn.Module
    to_map: ToMap


def is_token_model(model: nn.Module) -> bool:
    """Whether `model` runs units on token states and states its taps with `tap` (VOLO, ConViT, CrossViT)."""
    return hasattr(model, "tap_units") and callable(getattr(model, "tap", None))


def check_images(model: nn.Module, x: Any) -> None:
    """ValueError naming what was expected unless `x` is a batch of images `model` takes."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a float image batch (batch, channels, height, width); got {got}")
    if hasattr(model, "check_input"):
        model.check_input(x)


def target_classes(target: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """(B,) one class per image for `logits` (B, classes): the given one(s), or each image's top class when
    `target` is None."""
    if logits.ndim != 2:
        raise ValueError(f"explanations need classifier logits (batch, classes); the model gave "
                         f"{tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("the model's logits are not finite (NaN or inf) for this input; nothing to explain")
    b, n = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target).flatten().long()
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b or (t < 0).any() or (t >= n).any():
        raise ValueError(f"target must be one class or one per image, each in 0..{n - 1}; got {target!r} "
                         f"for a batch of {b}")
    return t


def check_target(target: object) -> None:
    if target is None or isinstance(target, torch.Tensor):
        return
    items = target if isinstance(target, (list, tuple)) else [target]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        raise TypeError(f"target must be a class index, a sequence of them, or None; got {target!r}")


def default_layer(model: nn.Module) -> int | str:
    """The layer CAMs use unless told: the last feature_info tap, or, where the logits come from a class token
    that the last tap's patch tokens do not reach, the input of the last block (as done for ViTs)."""
    kind = type(model).__name__
    if kind in _CLASS_TOKEN_LAST and is_token_model(model):
        return f"{model.units_name}.{len(model.units) - 2}"
    if kind in _CLASS_TOKEN_LAST and hasattr(model, "stages"):
        last = len(model.stages) - 1
        return f"stages.{last}.blocks.{len(model.stages[last].blocks) - 2}"
    return -1


def _feature_index(model: nn.Module, layer: int) -> int:
    n = len(getattr(model, "feature_info", []))
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} is out of range: {getattr(model, 'model_name', type(model).__name__)} has "
                         f"{n} feature_info taps (0..{n - 1}, or negative from the end)")
    return layer % n


def _grid(model: nn.Module, stage: int, hw: tuple[int, int]) -> tuple[int, int]:
    r = model.feature_info[stage]["reduction"]
    return -(-hw[0] // r), -(-hw[1] // r)


def _stage_tokens_to_map(model: nn.Module, name: str, hw: tuple[int, int]) -> ToMap | None:
    """For a module inside a stage that states `tokens_to_map` (CvT), the stage's own conversion."""
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "stages" or not parts[1].isdigit():
        return None
    stage = model.stages[int(parts[1])]
    if not hasattr(stage, "tokens_to_map"):
        return None
    grid = _grid(model, int(parts[1]), hw)

    def to_map(t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 3 or t.shape[1] != getattr(stage, "num_prefix_tokens", 0) + grid[0] * grid[1]:
            raise ValueError(f"layer {name!r} gives {tuple(t.shape)}, not the tokens of a {grid[0]}x{grid[1]} grid "
                             f"(input {hw[0]}x{hw[1]}); use an input whose sides are multiples of "
                             f"{model.feature_info[-1]['reduction']}, or pass reshape=")
        return stage.tokens_to_map(t, grid)
    return to_map


def _token_unit_to_map(model: nn.Module, name: str, hw: tuple[int, int]) -> ToMap | None:
    """For a unit of a token model, the map format of the first tap at or after it."""
    prefix = f"{model.units_name}."
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    if not rest.isdigit():
        return None
    unit = int(rest)
    k = next((k for k, u in enumerate(model.tap_units) if u >= unit), len(model.tap_units) - 1)
    return lambda s: model.tap(s, k, False, hw)


def resolve_layer(model: nn.Module, layer: int | str | None, hw: tuple[int, int],
                  reshape: ToMap | None = None) -> LayerTap:
    """The module and map conversion for `layer`: a feature_info index (the model's stated tap), a module name
    (`model.get_submodule` spelling), or None for `default_layer`. `reshape` overrides the conversion; without it
    a named module's 4-D output is taken as NCHW (a channels-last block interior needs reshape=)."""
    if layer is None:
        layer = default_layer(model)
    if isinstance(layer, bool) or not isinstance(layer, (int, str)):
        raise TypeError(f"layer must be a feature_info index or a module name; got {type(layer).__name__}")
    if isinstance(layer, int):
        k = _feature_index(model, layer)
        token = is_token_model(model)
        name = f"{model.units_name}.{model.tap_units[k]}" if token else model.feature_info[k]["module"]
    else:
        name = layer
    try:
        module = model.get_submodule(name)
    except (AttributeError, IndexError):
        raise ValueError(f"{name!r} is not a module of {getattr(model, 'model_name', type(model).__name__)}; "
                         f"give a feature_info index or a name from model.named_modules()") from None
    if isinstance(layer, int):
        to_map = (lambda s: model.tap(s, k, False, hw)) if token else None
    else:
        to_map = _token_unit_to_map(model, name, hw) if is_token_model(model) else None
        to_map = to_map or _stage_tokens_to_map(model, name, hw)
    return LayerTap(name, module, reshape or to_map or _as_map(name))


def _as_map(name: str) -> ToMap:
    def to_map(out: Any) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"layer {name!r} outputs {got}, not an NCHW map; pass reshape= to turn its output into "
                             f"(batch, channels, height, width), or choose a feature_info index")
        return out
    return to_map


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run `model` in evaluation mode, then give every module back its own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def capture(module: nn.Module) -> Iterator[list]:
    """Record what `module` outputs during the block (one entry per call); the hook is removed on exit, even
    when the block raises."""
    outputs: list = []
    handle = module.register_forward_hook(lambda _m, _args, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def single_output(outputs: list, name: str) -> Any:
    """The one output a hooked layer gave in a forward pass; ValueError when it ran not exactly once."""
    if len(outputs) != 1:
        raise ValueError(f"layer {name!r} ran {len(outputs)} times in one forward pass; choose a layer that runs "
                         f"exactly once (a feature_info index, or a module on the forward path)")
    return outputs[0]


def tensors_of(out: Any) -> list[torch.Tensor]:
    """The tensors in a layer's output (a tensor, or a list/tuple of them, as CrossViT's branch states)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise ValueError(f"expected a layer output of tensors; got {type(out).__name__}")


def rebuild(out: Any, tensors: list[torch.Tensor]) -> Any:
    """`tensors` in the structure of `out` (the inverse of `tensors_of`)."""
    return tensors[0] if isinstance(out, torch.Tensor) else type(out)(tensors)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def contiguous_grad(t: torch.Tensor) -> torch.Tensor:
    """`t`, with the gradient flowing back into it made contiguous."""
    return _ContiguousGrad.apply(t) if t.requires_grad else t


class BatchNormGradFix(TorchFunctionMode):
    """Hands every BatchNorm a contiguous output gradient. torch 2.13's CPU batch-norm backward gives wrong input
    gradients for a batch of one when the output gradient is strided as a flatten(2).transpose(1, 2) downstream
    leaves it (CvT's convolutional projections), in train and eval mode alike."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return contiguous_grad(out) if func is F.batch_norm else out
