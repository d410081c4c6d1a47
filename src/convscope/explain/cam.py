"""Class activation maps: Grad-CAM, Grad-CAM++, Score-CAM and Layer-CAM on any zoo model, NCHW or token.

Each map is computed at one layer (`taps.resolve_layer`: a feature_info index, a module name, or the family's
default), from the layer's activations A (B, C, h, w) and, except for Score-CAM, the gradient G of the explained
logit with respect to them:

- Grad-CAM (Selvaraju et al., 1610.02391): ReLU(sum_c mean_hw(G_c) A_c).
- Grad-CAM++ (Chattopadhyay et al., 1710.11063): weights sum_hw ReLU(G) a, a = G^2 / (2 G^2 + sum_hw(A) G^3).
- Score-CAM (Wang et al., 1910.01279): weights softmax_c of the logit for the input masked by each channel's
  map, upsampled (align_corners=True, as pytorch-grad-cam does) and min-max normalised.
- Layer-CAM (Jiang et al., TIP 2021): ReLU(sum_c ReLU(G_c) A_c).

Maps are then post-processed as pytorch-grad-cam 1.5.7 does, so the two agree to 1e-5 on the same model, layer
and target: min-max normalised at the layer's resolution, resized bilinearly to the input, normalised again.
The forward hook lives only inside the call (removed on exit, also on error) and nothing computed is kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .taps import (
    BatchNormGradFix,
    LayerTap,
    ToMap,
    capture,
    check_images,
    check_target,
    eval_mode,
    rebuild,
    resolve_layer,
    single_output,
    target_classes,
    tensors_of,
)

METHODS = ("gradcam", "gradcam++", "scorecam", "layercam")


@dataclass(frozen=True)
class CAM:
    """A class activation map for each image of a batch."""

    maps: torch.Tensor  #: (B, H, W) in [0, 1] at the input's size
    raw: torch.Tensor  #: (B, h, w) the rectified weighted sum at the layer's resolution, before normalising
    targets: torch.Tensor  #: (B,) the class each map explains
    layer: str  #: the hooked module
    method: str


def layer_activations_and_grads(model: nn.Module, x: torch.Tensor, tap: LayerTap,
                                target: int | Sequence[int] | torch.Tensor | None
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, G, targets): the layer's map (B, C, h, w), the gradient of each image's target logit with respect
    to it, and the targets. ValueError when the gradient is zero everywhere (the layer does not reach the
    logit, as the patch tokens after a class-token model's last block)."""
    x = x.detach().requires_grad_(True)
    with capture(tap.module) as outs, BatchNormGradFix():
        logits = model(x)
    out = single_output(outs, tap.name)
    targets = target_classes(target, logits)
    ts = tensors_of(out)
    score = logits.gather(1, targets[:, None]).sum()
    grads = torch.autograd.grad(score, ts, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, ts, strict=True)]
    acts = tap.to_map(rebuild(out, [t.detach() for t in ts]))
    grad_map = tap.to_map(rebuild(out, grads))
    if not grad_map.any():
        raise ValueError(f"the target logit does not depend on layer {tap.name!r} (its gradient is zero): choose "
                         f"an earlier layer")
    return acts, grad_map, targets


def _score_weights(model: nn.Module, x: torch.Tensor, acts: torch.Tensor, targets: torch.Tensor,
                   batch_size: int) -> torch.Tensor:
    """Score-CAM's channel weights (B, C): softmax over channels of the target logit of the masked inputs."""
    up = F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=True)
    flat = up.flatten(2)
    lo, hi = flat.min(-1)[0][..., None, None], flat.max(-1)[0][..., None, None]
    masks = (up - lo) / (hi - lo + 1e-8)
    weights = []
    for b in range(x.shape[0]):
        masked = x[b][None] * masks[b][:, None]
        scores = torch.cat([model(masked[i:i + batch_size])[:, targets[b]]
                            for i in range(0, masked.shape[0], batch_size)])
        weights.append(torch.softmax(scores, 0))
    return torch.stack(weights)


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    flat = cam.flatten(1)
    cam = cam - flat.min(1)[0][:, None, None]
    return cam / (1e-7 + cam.flatten(1).max(1)[0][:, None, None])


def _weighted(method: str, acts: torch.Tensor, grads: torch.Tensor | None,
              weights: torch.Tensor | None) -> torch.Tensor:
    """The rectified class activation map (B, h, w) of `method` from the layer's activations and gradients."""
    if method == "gradcam":
        weights = grads.mean((2, 3))
    elif method == "gradcam++":
        g2 = grads.pow(2)
        a = g2 / (2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads + 1e-6)
        weights = (grads.clamp_min(0) * torch.where(grads != 0, a, torch.zeros_like(a))).sum((2, 3))
    elif method == "layercam":
        return (grads.clamp_min(0) * acts).sum(1).clamp_min(0)
    return (weights[:, :, None, None] * acts).sum(1).clamp_min(0)


def class_activation_map(model: nn.Module, x: torch.Tensor, method: str = "gradcam",
                         target: int | Sequence[int] | torch.Tensor | None = None, layer: int | str | None = None,
                         reshape: ToMap | None = None, batch_size: int = 16) -> CAM:
    """The `method` CAM (one of METHODS) of each image in `x` for class `target` (one for all, one per image, or
    None for each image's top class), at `layer` (a feature_info index, a module name, or None for the family's
    default; `reshape` turns that module's output into an NCHW map when it is not one). `batch_size`: masked
    inputs per forward pass in Score-CAM. The model runs in eval mode; its modules' flags are restored."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    check_target(target)
    check_images(model, x)
    tap = resolve_layer(model, layer, tuple(x.shape[-2:]), reshape)
    with eval_mode(model):
        if method == "scorecam":
            with torch.no_grad(), capture(tap.module) as outs:
                logits = model(x)
            acts = tap.to_map(single_output(outs, tap.name))
            targets = target_classes(target, logits)
            with torch.no_grad():
                weights = _score_weights(model, x, acts, targets, batch_size)
            grads = None
        else:
            acts, grads, targets = layer_activations_and_grads(model, x, tap, target)
            weights = None
    raw = _weighted(method, acts, grads, weights).detach()
    maps = F.interpolate(_normalise(raw)[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return CAM(_normalise(maps.clamp_min(0)), raw, targets, tap.name, method)
