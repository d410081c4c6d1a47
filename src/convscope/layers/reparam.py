"""The arithmetic of structural re-parameterisation: kernels merged, dilated and padded; BatchNorms and per-channel
affine maps folded into an adjacent conv or linear layer.

Blocks use these in their own `reparameterize()`. The walk that brings a whole model to its deploy form lives here
too, below models/ and deploy/ alike (`create_model(..., deploy=True)` and `load_checkpoint(...,
match_reparam_form=True)` use it; `convscope.deploy.reparam` wraps it as the REPARAMETERIZE transform and states
the protocol every re-parameterisable module follows):

- `reparameterize_(model)` calls `reparameterize()` on every module that has one, children before parents, and
  applies the nn.Sequential rule to every plain `nn.Sequential`: each BatchNorm directly after a conv / linear
  layer folds into it, each BatchNorm directly before a conv / linear layer without padding folds into that
  layer (a zero-padded conv is never folded into: its padded zeros would not see the shift);
- `match_reparam_form_(model, keys)` does the same only to the parts whose keys a checkpoint lacks.

Merged kernels are exact: a small kernel is zero-padded to the large one's size, a k x k kernel with dilation r
equals a dense (r(k-1)+1) x (r(k-1)+1) kernel with r-1 zeros between its taps, and BatchNorm (running statistics)
folds into the preceding conv's weight and bias.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

#: The layers a BatchNorm or per-channel affine map folds into (a transposed conv only from after: its output
#: positions each get the bias, but its input positions are not read as a conv reads them).
FOLDABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


# -- tensor arithmetic ---------------------------------------------------------------------------------------------
def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with eval-mode `bn(x) = scale * x + shift` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} without running statistics (track_running_stats=False) normalises "
                         "with batch statistics and cannot be folded")
    std = torch.sqrt(bn.running_var + bn.eps)
    weight = bn.weight if bn.weight is not None else torch.ones_like(std)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = weight / std
    return scale, bias - bn.running_mean * scale


def pad_kernel(kernel: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (..., kh, kw) kernel symmetrically to (..., size_h, size_w); both must have the same parity."""
    sh, sw = (size, size) if isinstance(size, int) else size
    kh, kw = kernel.shape[-2:]
    if (sh - kh) % 2 or (sw - kw) % 2 or sh < kh or sw < kw:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {sh}x{sw}")
    ph, pw = (sh - kh) // 2, (sw - kw) // 2
    return F.pad(kernel, (pw, pw, ph, ph))


def dilate_kernel(kernel: torch.Tensor, dilation: int | tuple[int, int]) -> torch.Tensor:
    """The dense kernel equal to `kernel` applied with `dilation`: taps r apart with zeros between them,
    (r(k-1)+1) wide."""
    rh, rw = (dilation, dilation) if isinstance(dilation, int) else dilation
    kh, kw = kernel.shape[-2:]
    out = kernel.new_zeros(*kernel.shape[:-2], rh * (kh - 1) + 1, rw * (kw - 1) + 1)
    out[..., ::rh, ::rw] = kernel
    return out


def effective_kernel_size(conv: nn.Conv2d) -> tuple[int, int]:
    """Extent of a conv's kernel once dilation is written out: r(k-1)+1 per dimension."""
    return tuple(d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation, strict=False))


def merge_parallel_convs(convs: Iterable[nn.Conv2d]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one dense conv equal to the sum of parallel convs that read the same input.

    The convs must share channels, groups and stride and be centred ("same" padding: d(k-1)/2); kernels are
    dilated out, zero-padded to the largest extent and summed, as are the biases.
    """
    convs = list(convs)
    ref = convs[0]
    size = tuple(max(effective_kernel_size(c)[i] for c in convs) for i in range(2))
    weight = ref.weight.new_zeros(*ref.weight.shape[:2], *size)
    bias = ref.weight.new_zeros(ref.out_channels)
    for c in convs:
        ext = effective_kernel_size(c)
        if (c.in_channels, c.out_channels, c.groups, c.stride) != (ref.in_channels, ref.out_channels, ref.groups,
                                                                    ref.stride):
            raise ValueError("parallel convs must share channels, groups and stride to be merged")
        if tuple(c.padding) != tuple((e - 1) // 2 for e in ext) or c.padding_mode != "zeros":
            raise ValueError(f"parallel conv {c} is not centred (padding must be dilation*(k-1)/2, zeros)")
        weight = weight + pad_kernel(dilate_kernel(c.weight, c.dilation), size)
        if c.bias is not None:
            bias = bias + c.bias
    return weight, bias


# -- in-place folds ------------------------------------------------------------------------------------------------
def _set_weight_bias(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=layer.weight.requires_grad)
    layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=layer.weight.requires_grad)


def _view_out(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (weight.ndim - 1)))


@torch.no_grad()
def fuse_affine_after_(layer: nn.Module, scale: torch.Tensor | None = None,
                       shift: torch.Tensor | None = None) -> nn.Module:
    """Fold `y -> scale * y + shift` (per output channel; None: 1 and 0) applied after a Conv2d / ConvTranspose2d /
    Linear into it, in place."""
    w = layer.weight
    transposed = isinstance(layer, nn.ConvTranspose2d)
    out_ch = layer.out_channels if transposed else w.shape[0]
    b = layer.bias if layer.bias is not None else w.new_zeros(out_ch)
    scale = torch.ones_like(b) if scale is None else scale
    shift = torch.zeros_like(b) if shift is None else shift
    if transposed:  # weight (in, out / groups, kh, kw): output channel g * out/groups + j is weight[group g rows, j]
        g = layer.groups
        per_w = scale.reshape(g, 1, out_ch // g).expand(g, w.shape[0] // g, out_ch // g).reshape(*w.shape[:2], 1, 1)
    else:
        per_w = _view_out(scale, w)
    _set_weight_bias(layer, w * per_w, b * scale + shift)
    return layer


@torch.no_grad()
def fuse_affine_before_(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """Fold `x -> scale * x + shift` (per input channel) applied before a Conv2d / Linear into it, in place.

    Exact only where every input the layer reads went through the affine map: a conv without padding.
    """
    if isinstance(layer, nn.ConvTranspose2d):
        raise ValueError(f"a per-channel affine map before {layer} is not folded: only after a transposed conv")
    if isinstance(layer, nn.Conv2d) and any(p != 0 for p in _padding(layer)):
        raise ValueError(f"cannot fold a per-channel affine map into {layer}: its zero padding would not see the "
                         "shift")
    w = layer.weight
    b = layer.bias if layer.bias is not None else w.new_zeros(w.shape[0])
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    s, t = _per_weight(scale, w, groups), _per_weight(shift, w, groups)
    _set_weight_bias(layer, w * s, b + (w * t).flatten(1).sum(1))
    return layer


def _per_weight(v: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A per-input-channel vector laid out like `weight` (out, in/groups, ...): weight[o, i] reads input channel
    (o // (out/groups)) * (in/groups) + i."""
    out_ch, in_per_group = weight.shape[:2]
    v = v.reshape(groups, 1, in_per_group).expand(groups, out_ch // groups, in_per_group)
    return v.reshape(out_ch, in_per_group, *([1] * (weight.ndim - 2)))


def fuse_bn_into_conv_(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """conv -> BN becomes one conv with a bias (in place on `layer`; `bn` is left for the caller to drop)."""
    return fuse_affine_after_(layer, *bn_affine(bn))


def fuse_bn_before_conv_(bn: nn.modules.batchnorm._BatchNorm, layer: nn.Module) -> nn.Module:
    """BN -> conv (the conv without padding) becomes one conv with a bias (in place on `layer`)."""
    return fuse_affine_before_(layer, *bn_affine(bn))


def fold_bn_act_after_(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """conv / linear -> BN (+ the activation a BatchNormAct module carries as `act`) folds into `layer` in place;
    returns what should replace `bn`: its activation, or an Identity."""
    fuse_bn_into_conv_(layer, bn)
    return getattr(bn, "act", None) or nn.Identity()


def fold_bn_before_(bn: nn.modules.batchnorm._BatchNorm, layer: nn.Module) -> nn.Module:
    """BN (without an activation) -> unpadded conv / linear folds into `layer` in place; returns an Identity to
    replace `bn`."""
    if not isinstance(getattr(bn, "act", None) or nn.Identity(), nn.Identity):
        raise ValueError(f"{type(bn).__name__} carries an activation: it cannot fold into the layer after it")
    fuse_bn_before_conv_(bn, layer)
    return nn.Identity()


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):
        return (0,) if conv.padding == "valid" else (1,)
    return tuple(conv.padding)


def is_unpadded(layer: nn.Module) -> bool:
    """A linear layer, or a conv without padding: every input it reads went through what precedes it."""
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and all(p == 0 for p in _padding(layer)))


# -- the nn.Sequential rule ----------------------------------------------------------------------------------------
def plain_sequential(module: nn.Module) -> bool:
    """An nn.Sequential whose forward is nn.Sequential's own (its children run one after the other)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _bn_matches(layer: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and type(bn) is nn.BatchNorm2d) or \
        (isinstance(layer, nn.Linear) and type(bn) is nn.BatchNorm1d)


def sequential_bn_folds(seq: nn.Module) -> list[tuple[str, str, str]]:
    """The BatchNorms `reparameterize_` folds in a plain nn.Sequential: (bn name, layer name, "after" | "before")
    for BN directly after a conv/linear layer, or directly before one without padding (Identities skipped)."""
    if not plain_sequential(seq):
        return []
    items = [(n, m) for n, m in seq.named_children() if not isinstance(m, nn.Identity)]
    folds, used = [], set()
    for (n1, m1), (n2, m2) in zip(items, items[1:], strict=False):
        if n1 in used:
            continue
        if isinstance(m1, FOLDABLE) and _bn_matches(m1, m2) and m2.running_mean is not None:
            folds.append((n2, n1, "after"))
            used.add(n2)
        elif isinstance(m2, FOLDABLE) and _bn_matches(m2, m1) and m1.running_mean is not None and is_unpadded(m2):
            folds.append((n1, n2, "before"))
    return folds


def _fold_sequential_one(seq: nn.Sequential, bn_name: str, layer_name: str, where: str) -> None:
    bn, layer = getattr(seq, bn_name), getattr(seq, layer_name)
    if where == "after":
        fuse_bn_into_conv_(layer, bn)
    else:
        fuse_bn_before_conv_(bn, layer)
    setattr(seq, bn_name, nn.Identity())


def fold_sequential_(seq: nn.Module) -> int:
    """Apply the nn.Sequential rule to `seq` in place; returns how many BatchNorms were folded."""
    folds = sequential_bn_folds(seq)
    for fold in folds:
        _fold_sequential_one(seq, *fold)
    return len(folds)


# -- the walk ------------------------------------------------------------------------------------------------------
def children_first(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of `module` and all its descendants, every module after all of its descendants."""
    return list(reversed(list(module.named_modules())))   # reversed pre-order


def reparameterize_(module: nn.Module) -> nn.Module:
    """Turn `module` into its deploy form in place (children before parents) and return it. Idempotent."""
    for _, m in children_first(module):
        if callable(getattr(m, "reparameterize", None)):
            m.reparameterize()
        elif plain_sequential(m):
            fold_sequential_(m)
    return module


def is_reparameterizable(module: nn.Module) -> bool:
    """Whether `reparameterize_` would change anything structural in `module` (works on the meta device)."""
    return any(callable(getattr(m, "reparameterize", None)) or sequential_bn_folds(m) for m in module.modules())


def match_reparam_form_(module: nn.Module, keys: Iterable[str]) -> nn.Module:
    """Re-parameterise just the parts of `module` whose state-dict keys are not among `keys`, children first.

    This brings a train-form model to the form a checkpoint was saved in: the train form itself, our deploy
    form, or an official code's partial deploy form (e.g. RepLKNet's merged kernels with BatchNorms kept), so
    the checkpoint can be loaded strictly and the model then fully re-parameterised.
    """
    keys = set(keys)
    for name, m in children_first(module):
        prefix = f"{name}." if name else ""
        if callable(getattr(m, "reparameterize", None)):
            if not set(m.state_dict(prefix=prefix, keep_vars=True)) <= keys:
                m.reparameterize()
        elif plain_sequential(m):
            for bn_name, layer_name, where in sequential_bn_folds(m):
                bn_keys = set(getattr(m, bn_name).state_dict(prefix=f"{prefix}{bn_name}.", keep_vars=True))
                if not bn_keys <= keys:
                    _fold_sequential_one(m, bn_name, layer_name, where)
    return module


def reparameterize_model(model: nn.Module) -> nn.Module:
    """A deploy-form copy of `model`, in eval mode: parallel branches merged into single kernels and every
    BatchNorm beside a conv folded into it. `model` itself is left untouched; the copy's outputs equal the
    original's eval-mode outputs (up to floating-point rounding)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"reparameterize_model expects an nn.Module; got {type(model).__name__}")
    return reparameterize_(copy.deepcopy(model)).eval()
