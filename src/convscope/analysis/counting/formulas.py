"""What each aten operator costs: the MACs / FLOPs formulas, keyed by `torch.ops.aten` overload packets (as
torch/utils/flop_counter.py keys its own), and the lists of ops that cost nothing or only move bytes.

A formula is `fn(args, kwargs, out) -> (macs, elementwise_flops[, activations])`; out= overloads belong to the
same packet as the functional op, and in-place packets (`aten.add_`) take the functional op's formula
(`functional`). The conventions are in the docstring of `convscope.analysis.counting`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch._ops import OpOverloadPacket
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

Formula = Callable[[tuple, dict, Any], tuple[int, ...]]
FORMULAS: dict[OpOverloadPacket, Formula] = {}


def packets(names: Iterable[str]) -> list[OpOverloadPacket]:
    """`torch.ops.aten.<name>` for each name ('aten.' prefix optional); AttributeError for an op torch lacks."""
    return [getattr(aten, n.removeprefix("aten.")) for n in names]


def register(*ops: OpOverloadPacket) -> Callable[[Formula], Formula]:
    """Decorator: `fn` is the formula of `ops`. ValueError for an op that has a formula already."""
    def wrap(fn: Formula) -> Formula:
        taken = [str(op) for op in ops if op in FORMULAS]
        if taken:
            raise ValueError(f"{', '.join(taken)} has a formula already")
        FORMULAS.update(dict.fromkeys(ops, fn))
        return fn
    return wrap


# -- tensor helpers ----------------------------------------------------------------------------------------------
def numel(t: Any) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def tensors(tree: Any) -> list[torch.Tensor]:
    """The distinct tensors in a pytree of arguments or outputs, in order."""
    leaves, _ = tree_flatten(tree)
    seen: set[int] = set()
    out = []
    for x in leaves:
        if isinstance(x, torch.Tensor) and id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    return out


def first_tensor(tree: Any) -> torch.Tensor | None:
    ts = tensors(tree)
    return ts[0] if ts else None


def same_size(x: Any, out: Any) -> bool:
    return isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and x.shape == out.shape


# -- convolution, matrix products, attention, FFT ----------------------------------------------------------------
def _conv(x: torch.Tensor, w: torch.Tensor, bias: Any, out: torch.Tensor, transposed: bool) -> tuple[int, int]:
    # weight (C_out, C_in/groups, *k); transposed (C_in, C_out/groups, *k): every output (input, when
    # transposed) element takes prod(weight.shape[1:]) multiply-accumulates.
    per = math.prod(w.shape[1:])
    macs = (x.numel() if transposed else out.numel()) * per
    return macs, out.numel() if isinstance(bias, torch.Tensor) else 0


@register(aten.convolution, aten._convolution, aten.convolution_overrideable, aten.cudnn_convolution)
def _convolution(args, kwargs, out):
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return _conv(args[0], args[1], bias, out, transposed)


@register(aten._slow_conv2d_forward, aten._conv_depthwise2d, aten.slow_conv_dilated2d, aten.slow_conv3d_forward,
          aten.thnn_conv2d)
def _conv_bias3(args, kwargs, out):  # (input, weight, kernel_size, bias, ...)
    return _conv(args[0], args[1], args[3] if len(args) > 3 else kwargs.get("bias"), first_tensor(out), False)


@register(aten.mkldnn_convolution)
def _mkldnn_conv(args, kwargs, out):  # (input, weight, bias, ...)
    return _conv(args[0], args[1], args[2] if len(args) > 2 else kwargs.get("bias"), out, False)


@register(aten.slow_conv_transpose2d, aten.slow_conv_transpose3d)
def _conv_transpose_slow(args, kwargs, out):  # (input, weight, kernel_size, bias, ...)
    return _conv(args[0], args[1], args[3] if len(args) > 3 else kwargs.get("bias"), out, True)


@register(aten.mm, aten.bmm, aten.matmul, aten.mv, aten.dot, aten.vdot)
def _matmul(args, kwargs, out):
    return numel(out) * args[0].shape[-1], 0


@register(aten.addmm, aten.baddbmm, aten.addbmm, aten.addmv)
def _addmatmul(args, kwargs, out):  # (bias, a, b): one add per output element for the bias
    n = numel(out)
    k = args[1].shape[-1]
    if args[1].ndim == 3 and out.ndim == 2:  # addbmm sums over the batch too
        k *= args[1].shape[0]
    return n * k, n


@register(aten.linear)
def _linear(args, kwargs, out):  # (input, weight, bias)
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return numel(out) * args[1].shape[-1], numel(out) if isinstance(bias, torch.Tensor) else 0


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> tuple[int, int, int]:
    # q (..., Hq, Sq, D), k (..., Hkv, Sk, D), v (..., Hkv, Sk, Dv); grouped-query heads broadcast.
    scores = q.numel() // q.shape[-1] * k.shape[-2]
    macs = scores * q.shape[-1] + scores * v.shape[-1]
    # scale + softmax (5) per score, plus the mask add; activations: the scores and the output, as on the math
    # path's two bmm
    ew = scores * (1 + ELEMENTWISE_COST["aten._softmax"]) + (scores if isinstance(mask, torch.Tensor) else 0)
    return macs, ew, scores + scores // k.shape[-2] * v.shape[-1]


@register(aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
          aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
          aten._scaled_dot_product_fused_attention_overrideable, aten._scaled_dot_product_attention_math,
          aten.scaled_dot_product_attention)
def _sdpa(args, kwargs, out):
    q, k, v = args[:3]
    mask = kwargs.get("attn_mask", kwargs.get("attn_bias"))
    if mask is None and len(args) > 3 and isinstance(args[3], torch.Tensor):
        mask = args[3]
    return _attention(q, k, v, mask)


def _fft(real_shape: Sequence[int], dims: Sequence[int]) -> int:
    n = math.prod(real_shape[d] for d in dims)
    return math.prod(real_shape) * max(math.ceil(math.log2(n)), 1) if n > 1 else 0


@register(aten._fft_r2c)
def _fft_r2c(args, kwargs, out):  # (input, dim, normalization, onesided)
    x, dims, norm = args[0], args[1], args[2]
    return _fft(x.shape, dims), (numel(out) if norm else 0)


@register(aten._fft_c2r)
def _fft_c2r(args, kwargs, out):  # (input, dim, normalization, last_dim_size)
    dims, norm = args[1], args[2]
    return _fft(out.shape, dims), (numel(out) if norm else 0)


@register(aten._fft_c2c)
def _fft_c2c(args, kwargs, out):  # (input, dim, normalization, forward): complex = 2 real values
    x, dims, norm = args[0], args[1], args[2]
    return 2 * _fft(x.shape, dims), (numel(out) if norm else 0)


# -- element-wise ops --------------------------------------------------------------------------------------------
# FLOPs per output element, by op name as `OpRecord.op` writes it. One elementary arithmetic, comparison or
# special function (exp, log, erf, tanh, sigmoid, sqrt, ...) is 1; composite activations count the steps of
# their formula.
ELEMENTWISE_COST: dict[str, int] = {
    **{f"aten.{n}": 1 for n in (
        "add", "sub", "rsub", "mul", "div", "neg", "abs", "sign", "reciprocal", "sqrt", "rsqrt", "exp", "exp2",
        "expm1", "log", "log2", "log10", "log1p", "pow", "square", "sin", "cos", "tan", "asin", "acos", "atan",
        "atan2", "sinh", "cosh", "tanh", "erf", "erfc", "erfinv", "sigmoid", "floor", "ceil", "round", "trunc",
        "frac", "remainder", "fmod", "floor_divide", "maximum", "minimum", "fmax", "fmin", "clamp", "clamp_min",
        "clamp_max", "clip", "relu", "relu6", "threshold", "eq", "ne", "lt", "le", "gt", "ge", "logical_not",
        "logical_and", "logical_or", "logical_xor", "bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor",
        "where", "masked_fill", "isnan", "isinf", "isfinite", "nan_to_num", "sgn", "heaviside",
        "bernoulli", "rand_like", "randn_like", "uniform", "normal", "exponential")},
    "aten.hardtanh": 2,          # two clamps
    "aten.leaky_relu": 2,        # compare, scale
    "aten._prelu_kernel": 2,
    "aten.softplus": 2,          # log1p(exp(x))
    "aten.elu": 3,               # compare, exp, scale-and-shift
    "aten.selu": 4,
    "aten.celu": 4,
    "aten.silu": 2,              # x * sigmoid(x)
    "aten.mish": 4,              # x * tanh(softplus(x))
    "aten.hardsigmoid": 3,       # relu6(x + 3) / 6
    "aten.hardswish": 4,         # x * relu6(x + 3) / 6
    "aten.glu": 2,               # a * sigmoid(b)
    "aten.addcmul": 2,
    "aten.addcdiv": 2,
    "aten.lerp": 3,              # a + w * (b - a)
    "aten.native_dropout": 2,    # draw the mask, scale
    "aten._softmax": 5,          # max, subtract, exp, sum, divide
    "aten._safe_softmax": 5,
    "aten._log_softmax": 5,      # max, subtract, exp, sum, log-subtract
}
_GELU_ERF, _GELU_TANH = 5, 9     # 0.5 x (1 + erf(x / sqrt 2)); 0.5 x (1 + tanh(c (x + 0.044715 x^3)))


def _elementwise(cost: int, complex_product: bool) -> Formula:
    def fn(args, kwargs, out):
        o = first_tensor(out)
        n = numel(o)
        if o is not None and o.is_complex():  # complex: a product is 4 mul + 2 add, others act on 2 parts
            n *= 6 if complex_product else 2
        return 0, cost * n
    return fn


for _op, _cost in zip(packets(ELEMENTWISE_COST), ELEMENTWISE_COST.values(), strict=False):
    register(_op)(_elementwise(_cost, _op in (aten.mul, aten.div)))


@register(aten.gelu)
def _gelu(args, kwargs, out):
    approximate = args[1] if len(args) > 1 else kwargs.get("approximate", "none")
    return 0, numel(out) * (_GELU_TANH if approximate == "tanh" else _GELU_ERF)


# -- reductions: FLOPs per *input* element (mean and norms add one per output element for the division / root) --
_REDUCTION_COST = {"sum": 1, "nansum": 1, "mean": 1, "nanmean": 1, "prod": 1, "amax": 1, "amin": 1, "max": 1,
                   "min": 1, "aminmax": 2, "argmax": 1, "argmin": 1, "any": 1, "all": 1, "cumsum": 1, "cumprod": 1,
                   "logsumexp": 3, "var": 3, "std": 3, "var_mean": 3, "std_mean": 3, "norm": 2,
                   "linalg_vector_norm": 2, "count_nonzero": 1}
_REDUCTION_FINISH = {"mean", "nanmean", "var", "std", "var_mean", "std_mean", "norm", "linalg_vector_norm"}


def _reduction(cost: int, finishes: bool) -> Formula:
    def fn(args, kwargs, out):
        finish = sum(numel(o) for o in tensors(out)) if finishes else 0
        return 0, cost * numel(args[0]) + finish
    return fn


for _op, (_name, _cost) in zip(packets(_REDUCTION_COST), _REDUCTION_COST.items(), strict=False):
    register(_op)(_reduction(_cost, _name in _REDUCTION_FINISH))


# -- normalisation -----------------------------------------------------------------------------------------------
# Statistics from the data 3 per element (sum, subtract-and-square, sum), normalising 2 (subtract mean, multiply
# by 1/std), the affine 1 per element for each of weight and bias.
def _norm_cost(n: int, batch_stats: bool, weight: Any, bias: Any) -> int:
    return n * (3 * batch_stats + 2 + isinstance(weight, torch.Tensor) + isinstance(bias, torch.Tensor))


@register(aten.native_layer_norm)
def _layer_norm(args, kwargs, out):  # (input, normalized_shape, weight, bias, eps)
    return 0, _norm_cost(args[0].numel(), True, args[2], args[3])


@register(aten.native_group_norm)
def _group_norm(args, kwargs, out):  # (input, weight, bias, N, C, HxW, group, eps)
    return 0, _norm_cost(args[0].numel(), True, args[1], args[2])


@register(aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_functional,
          aten.batch_norm, aten.instance_norm)
def _batch_norm(args, kwargs, out):
    # native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps);
    # _native_batch_norm_legit without running stats: (input, weight, bias, training, momentum, eps)
    training = next((a for a in args[3:] if isinstance(a, bool)), True)
    return 0, _norm_cost(args[0].numel(), training, args[1], args[2])


@register(aten._native_batch_norm_legit_no_training)
def _batch_norm_eval(args, kwargs, out):
    return 0, _norm_cost(args[0].numel(), False, args[1], args[2])


@register(aten.native_layer_norm_backward, aten.native_group_norm_backward, aten.native_batch_norm_backward)
def _norm_backward(args, kwargs, out):
    return 0, 8 * numel(args[0])


# -- pooling and interpolation -----------------------------------------------------------------------------------
# Pooling: a window of k elements costs k per output (k - 1 adds and a divide; k - 1 compares for max, counted
# as k). The full window is charged at the borders too.
def _pool(ndim: int) -> Formula:
    def fn(args, kwargs, out):
        kernel = list(args[1] if len(args) > 1 else kwargs["kernel_size"])
        return 0, numel(first_tensor(out)) * math.prod(kernel * ndim if len(kernel) == 1 else kernel)
    return fn


for _nd in (1, 2, 3):
    register(*packets((f"avg_pool{_nd}d", f"max_pool{_nd}d", f"max_pool{_nd}d_with_indices")))(_pool(_nd))


@register(aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d, aten.adaptive_avg_pool1d, aten.adaptive_max_pool2d,
          aten.adaptive_max_pool3d, aten.adaptive_max_pool1d)
def _adaptive_pool(args, kwargs, out):
    return 0, numel(args[0]) + numel(first_tensor(out))


# Interpolation: FLOPs per output element for the weighted taps (bilinear 4 taps = 4 mul + 3 add).
_INTERP_COST = {"upsample_nearest1d": 0, "upsample_nearest2d": 0, "upsample_nearest3d": 0,
                "_upsample_nearest_exact1d": 0, "_upsample_nearest_exact2d": 0, "_upsample_nearest_exact3d": 0,
                "upsample_linear1d": 3, "upsample_bilinear2d": 7, "_upsample_bilinear2d_aa": 7,
                "upsample_trilinear3d": 15, "upsample_bicubic2d": 31, "_upsample_bicubic2d_aa": 31,
                "grid_sampler_2d": 7, "grid_sampler_3d": 15}


def _interpolation(cost: int) -> Formula:
    def fn(args, kwargs, out):  # resizing to the same size is a copy
        return 0, 0 if same_size(args[0], first_tensor(out)) else cost * numel(first_tensor(out))
    return fn


for _op, _cost in zip(packets(_INTERP_COST), _INTERP_COST.values(), strict=False):
    register(_op)(_interpolation(_cost))


@register(aten.col2im)
def _col2im(args, kwargs, out):  # overlapping patches are summed
    return 0, numel(args[0])


# -- ops without arithmetic --------------------------------------------------------------------------------------
# Views and metadata: no work, no bytes.
ZERO_COST_OPS: frozenset[OpOverloadPacket] = frozenset(packets((
    "view", "_unsafe_view", "reshape", "_reshape_alias", "view_as", "permute", "transpose", "t", "expand",
    "expand_as", "squeeze", "unsqueeze", "split", "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes",
    "chunk", "unsafe_chunk", "tensor_split", "unbind", "slice", "select", "narrow", "detach", "detach_", "alias",
    "as_strided", "unfold", "movedim", "diagonal", "flatten", "unflatten", "view_as_real", "view_as_complex",
    "real", "imag", "_conj", "conj", "resolve_conj", "resolve_neg", "_neg_view", "lift_fresh", "lift",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "set_",
    "_local_scalar_dense", "item", "is_same_size", "_has_compatible_shallow_copy_type",
    "_assert_async", "_assert_tensor_metadata", "sym_constrain_range", "_functional_sym_constrain_range",
    "_nested_tensor_from_mask", "dim", "size", "stride", "numel", "is_contiguous", "_version",
)))

# Data movement: bytes in and out, no arithmetic.
DATA_MOVEMENT_OPS: frozenset[OpOverloadPacket] = frozenset(packets((
    "cat", "stack", "hstack", "vstack", "clone", "copy", "copy_", "_to_copy", "contiguous", "to", "_copy_from",
    "_copy_from_and_resize", "index", "index_select", "gather", "scatter", "scatter_add", "index_put",
    "index_put_", "_unsafe_index", "_unsafe_index_put", "index_copy", "index_fill", "masked_scatter",
    "masked_select", "take", "take_along_dim", "embedding", "constant_pad_nd", "pad", "reflection_pad1d",
    "reflection_pad2d", "reflection_pad3d", "replication_pad1d", "replication_pad2d", "replication_pad3d",
    "roll", "flip", "repeat", "tile", "repeat_interleave", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "im2col", "narrow_copy", "slice_scatter", "select_scatter", "diagonal_scatter",
    "as_strided_scatter", "split_with_sizes_copy", "unbind_copy", "fill", "fill_", "zero", "zero_", "zeros",
    "zeros_like", "ones", "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_full", "scalar_tensor",
    "arange", "linspace", "logspace", "eye", "tril", "triu", "sort", "topk", "argsort", "one_hot", "tril_indices",
    "triu_indices", "nonzero", "_unique2", "randperm", "randint", "rand", "randn",
    "view_copy", "permute_copy", "transpose_copy", "expand_copy", "t_copy", "unsqueeze_copy", "squeeze_copy",
    "alias_copy", "slice_copy", "select_copy", "detach_copy", "_reshape_copy", "unfold_copy",
)))


def known(op: OpOverloadPacket) -> bool:
    """Whether `op` has a formula or is listed as free or as data movement."""
    return op in FORMULAS or op in ZERO_COST_OPS or op in DATA_MOVEMENT_OPS


def functional(op: OpOverloadPacket) -> OpOverloadPacket:
    """The packet whose formula and list `op` follows: an in-place op that has none of its own follows its
    functional op (aten.add_ -> aten.add); any other op, itself."""
    if known(op) or not op.__name__.endswith("_"):
        return op
    namespace, name = op._qualified_op_name.split("::")
    base = getattr(getattr(torch.ops, namespace), name[:-1], None)
    return base if base is not None and known(base) else op
