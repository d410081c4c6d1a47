"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al., "Layer-Wise Relevance Propagation: An
Overview", 2019) on any zoo model, written as gradient x input through a forward pass whose operations are
rewritten so that their backward pass is the LRP rule:

- convolutions, linear layers (and eval-mode BatchNorm, an affine map) take the chosen rule: epsilon,
  R_i = x_i w_ij R_j / (z_j + eps sign z_j); gamma, the same with w + gamma w+; z+, with w+ only. The forward
  value is kept: out = z.detach() + (z_rho - z_rho.detach()) * (z / stab(z_rho)).detach().
- element-wise activations that are not positively homogeneous (GELU, SiLU, Hardswish, Mish, Softplus, ELU,
  tanh) pass relevance unchanged (the identity rule, y = x * (f(x) / x) with the ratio constant); ReLU, max- and
  average pooling, resampling, FFTs and other linear maps need no rewrite.
- normalisations are propagated through as constants (Ali et al., "XAI for Transformers: Better Explanations
  through Conservative Propagation", 2202.07304): LayerNorm and GroupNorm with their standard deviation detached,
  any division by an input-dependent tensor with the divisor detached; softmax, sigmoid, exp, erf, sqrt,
  rsqrt and F.normalize outputs are constants (attention weights, cosine-attention queries and keys, gates: the
  AH rule there); x ** p is x * x ** (p - 1) with the second factor constant (StarReLU's and squared ReLU's
  squares).
- a product of two input-dependent tensors (*, @, bmm or a two-operand einsum: gating, attention times values
  when not detached, dynamic kernels) gives each factor half the relevance (the uniform rule), and a layer
  scale or residual sum needs no rule: gradient x input conserves through both.

What is not conserved is what additive constants absorb: biases, BatchNorm and LayerNorm shifts, position
embeddings and class tokens, and the epsilon stabiliser. `Relevance.absorbed` reports it; with those constants
zero and epsilon -> 0 the input relevance sums to the explained logit (`check_conservation`).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .taps import check_images, check_target, contiguous_grad, eval_mode, target_classes

RULES = ("epsilon", "gamma", "zplus")

_AFFINE = {F.conv1d, F.conv2d, F.conv3d, F.linear}
_IDENTITY = {F.gelu, F.silu, F.hardswish, F.mish, F.softplus, F.elu, torch.tanh, torch.Tensor.tanh, F.tanh}
_CONSTANT = {torch.softmax, F.softmax, torch.Tensor.softmax, torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid,
             torch.exp, torch.Tensor.exp, torch.erf, torch.Tensor.erf,
             torch.sqrt, torch.Tensor.sqrt, torch.rsqrt, torch.Tensor.rsqrt, F.log_softmax, F.normalize}
_PRODUCT = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.matmul,
            torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}
_DIVISION = {torch.div, torch.Tensor.div, torch.Tensor.__truediv__}
_POWER = {torch.pow, torch.Tensor.pow, torch.Tensor.__pow__}


def _grad(t: object) -> bool:
    """Whether `t` depends on the input (the parameters are frozen during the LRP forward pass)."""
    return isinstance(t, torch.Tensor) and t.requires_grad


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _keep_forward(z: torch.Tensor, z_rho: torch.Tensor, eps: float) -> torch.Tensor:
    """z in the forward pass; in the backward pass the gradient of z_rho scaled by z / stab(z_rho)."""
    stab = _stab(z_rho, eps).detach()
    ratio = torch.where(stab != 0, z.detach() / torch.where(stab != 0, stab, torch.ones_like(stab)), 0.0)
    return z.detach() + (z_rho - z_rho.detach()) * ratio


def _identity_rule(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y in the forward pass, relevance passed through unchanged: x * (y / x) with the ratio constant."""
    ratio = torch.where(x != 0, y / torch.where(x != 0, x, torch.ones_like(x)), torch.zeros_like(x))
    return x * ratio.detach() + (y - x * ratio).detach()


class LRPMode(TorchFunctionMode):
    """Inside this mode torch operations follow the LRP rules of the module docstring."""

    def __init__(self, rule: str = "epsilon", epsilon: float = 1e-6, gamma: float = 0.25) -> None:
        super().__init__()
        self.rule, self.epsilon, self.gamma = rule, epsilon, gamma

    def _rho(self, w: torch.Tensor | None) -> torch.Tensor | None:
        if w is None or self.rule == "epsilon":
            return w
        return w + self.gamma * w.clamp_min(0) if self.rule == "gamma" else w.clamp_min(0)

    def _affine(self, func, args, kwargs):
        z = func(*args, **kwargs)
        x, w = args[0], args[1] if len(args) > 1 else kwargs.get("weight")
        if not _grad(x) or _grad(w):
            return _uniform(func, args, kwargs) if _grad(w) and _grad(x) else z
        rest = list(args[2:])
        b = rest.pop(0) if rest else kwargs.pop("bias", None)
        z_rho = z if self.rule == "epsilon" else func(x, self._rho(w), self._rho(b), *rest, **kwargs)
        return _keep_forward(z, z_rho, self.epsilon)

    def _norm(self, func, args, kwargs):
        """LayerNorm / GroupNorm with the standard deviation constant (BatchNorm in eval is affine)."""
        x = args[0]
        y = func(*args, **kwargs)
        if not _grad(x):
            return y
        if func is F.batch_norm:  # contiguous_grad: see taps.BatchNormGradFix
            y = contiguous_grad(y)
            return _keep_forward(y, y, self.epsilon)
        dims = tuple(range(x.ndim - len(args[1]), x.ndim)) if func is F.layer_norm else None
        if dims is None:  # group norm: statistics over each group's channels and positions
            g = args[1]
            xg = x.reshape(x.shape[0], g, -1)
            centred = (xg - xg.mean(-1, keepdim=True)).reshape(x.shape)
        else:
            centred = x - x.mean(dims, keepdim=True)
        ratio = torch.where(centred != 0, (y - _shift(func, args, kwargs, x)) / torch.where(
            centred != 0, centred, torch.ones_like(centred)), torch.zeros_like(centred))
        return centred * ratio.detach() + (y - centred * ratio).detach()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _AFFINE:
            return self._affine(func, args, kwargs)
        if func in (F.layer_norm, F.group_norm, F.batch_norm):
            return self._norm(func, args, kwargs)
        if func is F.scaled_dot_product_attention:
            return _attention(*args, **kwargs)
        if func is torch.einsum:
            return _einsum(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in _CONSTANT or func is F.grid_sample and _grad(args[1]):
            return out.detach() if func in _CONSTANT else func(args[0], args[1].detach(), *args[2:], **kwargs)
        if func in _IDENTITY and _grad(args[0]):
            return _identity_rule(out, args[0])
        if func in _PRODUCT and len(args) == 2 and _grad(args[0]) and _grad(args[1]):
            return _uniform(func, args, kwargs)
        if func in _DIVISION and len(args) == 2 and _grad(args[1]):
            return func(args[0], args[1].detach(), **kwargs)
        if func in _POWER and _grad(args[0]) and not isinstance(args[1], torch.Tensor) and args[1] != 1:
            return args[0] * func(args[0].detach(), args[1] - 1)
        if func in (torch.square, torch.Tensor.square) and _grad(args[0]):
            return args[0] * args[0].detach()
        return out



def _shift(func, args, kwargs, x: torch.Tensor) -> torch.Tensor | float:
    """The additive constant of a norm's affine map (its bias), broadcast to x; 0 without one."""
    bias = args[3] if len(args) > 3 else kwargs.get("bias")
    if bias is None:
        return 0.0
    if func is F.layer_norm:
        return bias
    return bias.reshape(1, -1, *([1] * (x.ndim - 2)))


def _uniform(func, args, kwargs) -> torch.Tensor:
    """f(a, b) with half the relevance to each factor: (f(a, b.detach()) + f(a.detach(), b)) / 2."""
    a, b = args[0], args[1]
    return 0.5 * (func(a, b.detach(), *args[2:], **kwargs) + func(a.detach(), b, *args[2:], **kwargs))


def _einsum(equation: str, *operands):
    """einsum with the uniform rule when it multiplies two input-dependent operands."""
    ops = list(operands[0]) if len(operands) == 1 and isinstance(operands[0], (list, tuple)) else list(operands)
    if len(ops) == 2 and _grad(ops[0]) and _grad(ops[1]):
        return 0.5 * (torch.einsum(equation, ops[0], ops[1].detach()) + torch.einsum(equation, ops[0].detach(), ops[1]))
    return torch.einsum(equation, *ops)


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q k^T * scale + mask) v with the attention weights constant."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = q.detach() @ k.detach().transpose(-2, -1) * scale
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
    return torch.softmax(logits, -1).detach() @ v


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without gradients inside the block (so only tensors computed from the input require one),
    their flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass(frozen=True)
class Relevance:
    """LRP relevance of each input element for each image's explained logit."""

    input: torch.Tensor  #: (B, C, H, W) relevance of every input element
    logit: torch.Tensor  #: (B,) the explained logits (the relevance put in at the top)
    targets: torch.Tensor  #: (B,) the explained classes
    rule: str

    @property
    def absorbed(self) -> torch.Tensor:
        """(B,) logit minus the summed input relevance: what biases, shifts and the stabiliser took."""
        return self.logit - self.input.flatten(1).sum(1)


def check_conservation(rel: Relevance, rtol: float = 1e-3) -> None:
    """ValueError unless each image's input relevance sums to its logit within `rtol` of |logit| (meaningful
    where the model's additive constants are zero; otherwise see `Relevance.absorbed`)."""
    err = rel.absorbed.abs() / rel.logit.abs().clamp_min(1e-12)
    if (err > rtol).any():
        raise ValueError(f"relevance is not conserved: input relevance misses the logit by {err.max().item():.3g} "
                         f"of it (tolerance {rtol})")


def lrp(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
        rule: str = "epsilon", epsilon: float = 1e-6, gamma: float = 0.25) -> Relevance:
    """Relevance of every element of `x` for the logit of `target` (one class, one per image, or None for each
    image's top class) under `rule` (one of RULES) for convolutions and linear layers; see the module docstring
    for the other operations. The model runs in eval mode; its modules' flags are restored."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    if not epsilon >= 0 or not gamma >= 0:
        raise ValueError(f"epsilon and gamma must be >= 0; got epsilon={epsilon!r}, gamma={gamma!r}")
    check_target(target)
    check_images(model, x)
    x = x.detach().requires_grad_(True)
    with eval_mode(model), frozen(model), LRPMode(rule, epsilon, gamma):
        logits = model(x)
    targets = target_classes(target, logits)
    chosen = logits.gather(1, targets[:, None])[:, 0]
    (grad,) = torch.autograd.grad(chosen.sum(), x)
    return Relevance((x * grad).detach(), chosen.detach(), targets, rule)
