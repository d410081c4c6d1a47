"""Input-dependent linear maps and occlusion with layer masking.

LinearScope: a network built of affine maps and piecewise-linear gates (ReLU, max pooling; convolutions,
linear layers, eval-mode BatchNorm, average pooling, residual sums) is, around each input x, exactly
f(x) = A(x) x + b(x): A(x) is the Jacobian at x and b(x) is the network run on a zero input with every gate
frozen as x set it (each ReLU's on/off pattern, each max pool's winners). `linear_map` computes both and checks
A x + b against f(x); where that fails (GELU, LayerNorm, attention: not piecewise linear) it gives the local
linearisation instead, b = f(x) - A x, and says it is not exact.

Occlusion (Zeiler & Fergus, 1311.2901) with layer masking (Balasubramanian & Feizi, "Towards Improved Input
Masking for Convolutional Neural Networks", 2211.14646): a patch is masked in the input and, with
`layer_masking`, in the input of every 2-D convolution too, at that layer's resolution (a position is masked
when any input pixel it covers is), so that biases do not refill the hole; a pixel's attribution is the mean
drop of the target logit over the patches that cover it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .lrp import frozen
from .taps import BatchNormGradFix, check_images, check_target, eval_mode, target_classes

_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_MAXPOOL = {F.max_pool2d, F._max_pool2d, F.max_pool2d_with_indices}


class GateMode(TorchFunctionMode):
    """Records each ReLU's pattern and each 2-D max pool's winners (`gates is None` at the start), or replays
    recorded ones in the same order."""

    def __init__(self, gates: list | None = None) -> None:
        super().__init__()
        self.replay = gates is not None
        self.gates = list(gates) if gates is not None else []
        self.position = 0

    def _next(self) -> torch.Tensor:
        if self.position >= len(self.gates):
            raise ValueError("the replayed network ran more gates than the recorded one: it is not piecewise linear "
                             "in a fixed order")
        self.position += 1
        return self.gates[self.position - 1]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _RELU:
            x = args[0]
            if self.replay:
                return x * self._next()
            self.gates.append((x > 0).to(x.dtype))
            return func(*args, **kwargs)
        if func in _MAXPOOL:
            return self._max_pool(args, kwargs)
        return func(*args, **kwargs)

    def _max_pool(self, args, kwargs):
        x = args[0]
        wants = kwargs.pop("return_indices", False)
        if self.replay:
            idx = self._next()
            out = x.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
        else:
            out, idx = F.max_pool2d_with_indices(*args, **kwargs)
            self.gates.append(idx)
        return (out, idx) if wants else out


@dataclass(frozen=True)
class LinearMap:
    """f(x) = A x + b around one input x."""

    A: torch.Tensor  #: (K, D) with D = C * H * W (the input flattened)
    b: torch.Tensor  #: (K,)
    output: torch.Tensor  #: (K,) f(x)
    exact: bool  #: A x + b equals f(x) with b from the frozen gates (a piecewise-linear network)
    error: float  #: max |A x + b_frozen - f(x)| / max |f(x)|, the check behind `exact`


def linear_map(model: nn.Module, x: torch.Tensor, rtol: float = 1e-5) -> LinearMap:
    """The exact input-dependent linear map of `model` at the single image `x` (1, C, H, W) when the model is
    piecewise linear (relative error of A x + b at most `rtol`), else its local linearisation there."""
    check_images(model, x)
    if x.shape[0] != 1:
        raise ValueError(f"linear_map explains one image at a time; got a batch of {x.shape[0]}")
    x = x.detach().requires_grad_(True)
    with eval_mode(model), frozen(model):
        with BatchNormGradFix(), GateMode() as recorder:
            y = model(x)[0]
        rows = [torch.autograd.grad(y[k], x, retain_graph=k < y.numel() - 1)[0].flatten() for k in range(y.numel())]
        with torch.no_grad(), GateMode(recorder.gates):
            b = model(torch.zeros_like(x))[0]
    A, y = torch.stack(rows), y.detach()
    error = ((A @ x.detach().flatten() + b - y).abs().max() / y.abs().max().clamp_min(1e-30)).item()
    exact = error <= rtol
    return LinearMap(A, b if exact else y - A @ x.detach().flatten(), y, exact, error)


class LayerMasking(TorchFunctionMode):
    """Multiplies the input of every 2-D convolution by `keep` (1, 1, H, W) brought to its resolution (a position
    is dropped when any input pixel it covers is)."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.keep = keep

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and args[0].ndim == 4:
            x = args[0]
            keep = 1 - F.adaptive_max_pool2d(1 - self.keep.to(x.dtype), x.shape[-2:])
            args = (x * keep, *args[1:])
        return func(*args, **kwargs)


def occlusion(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
              patch: int = 8, stride: int | None = None, layer_masking: bool = True) -> torch.Tensor:
    """(B, H, W) occlusion attribution of each image's `target` logit (None: its top class): patches of side
    `patch` every `stride` (default `patch`) pixels set to zero, and with `layer_masking` also zeroed in every
    2-D convolution's input (see the module docstring)."""
    stride = patch if stride is None else stride
    for name, v in (("patch", patch), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    check_target(target)
    check_images(model, x)
    h, w = x.shape[-2:]
    total = torch.zeros(x.shape[0], h, w, dtype=x.dtype)
    count = torch.zeros(h, w, dtype=x.dtype)
    with eval_mode(model), torch.no_grad():
        logits = model(x)
        targets = target_classes(target, logits)
        base = logits.gather(1, targets[:, None])[:, 0]
        for i in range(0, max(h - patch, 0) + 1, stride):
            for j in range(0, max(w - patch, 0) + 1, stride):
                keep = torch.ones(1, 1, h, w, dtype=x.dtype)
                keep[..., i:i + patch, j:j + patch] = 0
                if layer_masking:
                    with LayerMasking(keep):
                        out = model(x * keep)
                else:
                    out = model(x * keep)
                total[:, i:i + patch, j:j + patch] += (base - out.gather(1, targets[:, None])[:, 0])[:, None, None]
                count[i:i + patch, j:j + patch] += 1
    return total / count.clamp_min(1)
