"""Exact counting by intercepting aten operators: MACs, FLOPs, element-wise work, bytes moved, activations.

`count(model)` runs one forward pass under a `TorchDispatchMode` and prices every aten call the dispatcher sees
with a formula of its input and output shapes. On the meta device (the default) nothing is computed or
allocated, so a 600M-parameter model costs a fraction of a second. Each call is attributed to the innermost
`nn.Module` that ran it.

Conventions (DESIGN.md, "Counting conventions"):

- **MACs**: one multiply-accumulate = 1, for convolution (every output position, padding included; grouped
  and depthwise convs count `C_in / groups` inputs per output), matrix products (mm, addmm, bmm, baddbmm,
  linear, matmul; einsum lowers to these), attention (`Q K^T` and `A V`) and FFTs. Biases are not MACs.
- **FLOPs** = 2 x MACs. **Element-wise FLOPs** are reported apart: bias adds, norms, activations, softmax,
  pooling, interpolation, arithmetic and reductions, priced per element by `ELEMENTWISE_COST` and the
  formulas below (one elementary arithmetic or special function, e.g. `exp`, `erf`, `tanh`, = 1).
- **FFTs** (`_fft_r2c`, `_fft_c2r`, `_fft_c2c`): `L * ceil(log2 N)` MACs for `L` real elements (the real side
  of the transform) transformed in signals of `N` points, the `N log N` cost HorNet's official `calc_flops.py`
  charges for `rfft2` / `irfft2` (which reads the (B, C, H, W) shape as (B, H, W, C) and so takes the log of
  C * H instead of H * W: under 0.1% of HorNet-T-GF's total). Orthonormal scaling adds one element-wise FLOP
  per output element.
- **Attention**: the fused kernels (`_scaled_dot_product_*_attention*`) count `Q K^T` and `A V`, a scale and a
  softmax per score; on the meta device `scaled_dot_product_attention` takes its math path instead (bmm,
  softmax), with the same MACs and activations and nearly the same element-wise FLOPs.
- **Bytes**: each distinct input tensor read once and each output written once (broadcast dimensions, stride 0,
  are not counted twice): the traffic an ideal kernel needs, no cache effects.
- **Activations**: output elements of every op that does MACs (conv, matrix products, attention, FFT), the
  measure of "Fast and Accurate Model Scaling" (Dollar et al., arXiv 2103.06877).
- Views and metadata ops (`ZERO_COST_OPS`) cost nothing; data movement (`DATA_MOVEMENT_OPS`: cat, clone,
  copy, padding, indexing, ...) moves bytes without FLOPs. A composite op without a formula is decomposed and
  its parts counted; anything left without a formula is listed in `CountResult.uncounted`, never counted as 0.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["CountResult", "OpRecord", "Totals", "count", "count_params", "ELEMENTWISE_COST", "ZERO_COST_OPS",
           "DATA_MOVEMENT_OPS", "FORMULAS", "MACS_CONVENTIONS"]


# -- results -----------------------------------------------------------------------------------------------------
@dataclass
class OpRecord:
    """One aten call: what it cost and which module ran it."""

    op: str                 # e.g. "aten.convolution"
    module: str             # qualified name of the innermost nn.Module that ran it ("" for the top level)
    module_type: str        # class name of that module
    macs: int = 0           # multiply-accumulates of conv / matmul-like work
    flops: int = 0          # 2 * macs
    elementwise_flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    activations: int = 0    # output elements of conv / matmul-like ops
    out_shape: tuple = ()
    fvcore_macs: int = 0    # the call's count under fvcore's default handles (see `MACS_CONVENTIONS`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Totals:
    """Summed counts of a set of aten calls."""

    macs: int = 0
    flops: int = 0
    elementwise_flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    activations: int = 0
    calls: int = 0          # aten calls, views included
    fvcore_macs: int = 0    # see MACS_CONVENTIONS

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def arithmetic_intensity(self) -> float:
        """(FLOPs + element-wise FLOPs) per byte moved; 0 when nothing is moved."""
        return (self.flops + self.elementwise_flops) / self.bytes if self.bytes else 0.0

    def add(self, r: OpRecord | "Totals") -> "Totals":
        self.macs += r.macs
        self.flops += r.flops
        self.elementwise_flops += r.elementwise_flops
        self.bytes_read += r.bytes_read
        self.bytes_written += r.bytes_written
        self.activations += r.activations
        self.fvcore_macs += r.fvcore_macs
        self.calls += r.calls if isinstance(r, Totals) else 1
        return self

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), bytes=self.bytes, arithmetic_intensity=self.arithmetic_intensity)


def _group(records: Iterable[OpRecord], key: Callable[[OpRecord], str]) -> dict[str, Totals]:
    out: dict[str, Totals] = {}
    for r in records:
        out.setdefault(key(r), Totals()).add(r)
    return out


@dataclass
class CountResult:
    """What `count()` found: totals, per-call records, and the same summed per operator / module / type."""

    totals: Totals
    params: int
    records: list[OpRecord]
    by_operator: dict[str, Totals]
    by_module: dict[str, Totals]
    by_module_type: dict[str, Totals]
    uncounted: dict[str, int]
    input_size: tuple
    dtype: str
    model_name: str = ""
    train: bool = False
    device: str = "meta"

    @classmethod
    def from_records(cls, records: list[OpRecord], uncounted: dict[str, int], **fields: Any) -> "CountResult":
        totals = Totals()
        for r in records:
            totals.add(r)
        return cls(totals=totals, records=records, uncounted=dict(uncounted),
                   by_operator=_group(records, lambda r: r.op), by_module=_group(records, lambda r: r.module),
                   by_module_type=_group(records, lambda r: r.module_type), **fields)

    def to_dict(self, records: bool = True) -> dict[str, Any]:
        """JSON-ready: totals, params, groupings, uncounted ops, and (unless `records=False`) every call."""
        d = dict(model_name=self.model_name, input_size=list(self.input_size), dtype=self.dtype, train=self.train,
                 device=self.device, params=self.params, totals=self.totals.to_dict(),
                 by_operator={k: v.to_dict() for k, v in self.by_operator.items()},
                 by_module={k: v.to_dict() for k, v in self.by_module.items()},
                 by_module_type={k: v.to_dict() for k, v in self.by_module_type.items()},
                 uncounted=dict(self.uncounted))
        if records:
            d["records"] = [dict(r.to_dict(), out_shape=list(r.out_shape)) for r in self.records]
        return d

    def macs_as(self, convention: str = "macs") -> int:
        """Total MACs under one of `MACS_CONVENTIONS` ("macs" or "fvcore")."""
        if convention == "macs":
            return self.totals.macs
        if convention == "fvcore":
            return self.totals.fvcore_macs
        raise ValueError(f"unknown MACs convention {convention!r}; expected one of {sorted(MACS_CONVENTIONS)}")

    def summary(self) -> str:
        """One line: params, MACs, FLOPs, element-wise FLOPs, activations, bytes, uncounted ops."""
        t = self.totals
        size = "x".join(map(str, self.input_size))
        name = f"{self.model_name} " if self.model_name else ""
        unc = ", ".join(f"{k} x{v}" for k, v in sorted(self.uncounted.items())) or "none"
        return (f"{name}{size} {self.dtype}{' train' if self.train else ''}: {self.params / 1e6:.2f}M params, "
                f"{t.macs / 1e9:.3f} GMACs ({t.flops / 1e9:.3f} GFLOPs + {t.elementwise_flops / 1e9:.3f} G "
                f"element-wise), {t.activations / 1e6:.2f}M activations, {t.bytes / 1e6:.1f} MB moved; "
                f"uncounted: {unc}")

    def table(self, by: str = "module", top: int = 20) -> str:
        """The `top` rows by MACs (then bytes), grouped `by` "module", "module_type", "operator" or "record"."""
        if by == "record":
            groups = [(f"{r.module or '<top>'}:{r.op}", Totals().add(r)) for r in self.records]
        else:
            table = {"module": self.by_module, "module_type": self.by_module_type,
                     "operator": self.by_operator}.get(by)
            if table is None:
                raise ValueError(f"table(by=...) expects 'module', 'module_type', 'operator' or 'record'; got {by!r}")
            groups = [(k or "<top>", v) for k, v in table.items()]
        groups.sort(key=lambda kv: (kv[1].macs, kv[1].bytes), reverse=True)
        total = self.totals
        headers = (by, "calls", "GMACs", "MACs %", "elem GFLOPs", "MB read", "MB written", "acts (M)", "FLOP/B")
        rows = [[k, str(v.calls), f"{v.macs / 1e9:.4f}", f"{100 * v.macs / max(total.macs, 1):.1f}",
                 f"{v.elementwise_flops / 1e9:.4f}", f"{v.bytes_read / 1e6:.2f}", f"{v.bytes_written / 1e6:.2f}",
                 f"{v.activations / 1e6:.3f}", f"{v.arithmetic_intensity:.1f}"] for k, v in groups[:top]]
        if len(groups) > top:
            rest = Totals()
            for _, v in groups[top:]:
                rest.add(v)
            rows.append([f"({len(groups) - top} more)", str(rest.calls), f"{rest.macs / 1e9:.4f}",
                         f"{100 * rest.macs / max(total.macs, 1):.1f}", f"{rest.elementwise_flops / 1e9:.4f}",
                         f"{rest.bytes_read / 1e6:.2f}", f"{rest.bytes_written / 1e6:.2f}",
                         f"{rest.activations / 1e6:.3f}", f"{rest.arithmetic_intensity:.1f}"])
        rows.append(["total", str(total.calls), f"{total.macs / 1e9:.4f}", "100.0",
                     f"{total.elementwise_flops / 1e9:.4f}", f"{total.bytes_read / 1e6:.2f}",
                     f"{total.bytes_written / 1e6:.2f}", f"{total.activations / 1e6:.3f}",
                     f"{total.arithmetic_intensity:.1f}"])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        out = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
        if self.uncounted:
            out.append("uncounted: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.uncounted.items())))
        return "\n".join(out)


#: How official tables count, by the name a ModelCard gives in `macs_convention`.
MACS_CONVENTIONS: dict[str, str] = {
    "macs": "multiply-accumulates of convolution, matrix products, attention and FFTs only (`Totals.macs`)",
    "fvcore": "fvcore's FlopCountAnalysis with its default handles, which timm's tables and most official "
              "READMEs use: the MACs above (biases excluded) plus its charges for norms (LayerNorm / GroupNorm "
              "5 per element with a weight, 4 without; BatchNorm in eval 2 per element with a weight, 1 "
              "without), adaptive average pooling (1 per input element) and upsampling (nearest 1, bilinear 4 "
              "per output element); activations, element-wise arithmetic, softmax and plain pooling are free. "
              "Attention counts its two matrix products, as fvcore does on the official code's explicit "
              "`q @ k.T` and `attn @ v`, and FFTs their N log N MACs, as HorNet's calc_flops.py adds them to "
              "fvcore (`Totals.fvcore_macs`)",
}


# -- tensor helpers ----------------------------------------------------------------------------------------------
def _numel(t: Any) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _footprint(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses: broadcast (stride-0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


def _tensors(tree: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    seen: set[int] = set()
    out = []
    for x in leaves:
        if isinstance(x, torch.Tensor) and id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    return out


def _first_tensor(tree: Any) -> torch.Tensor | None:
    ts = _tensors(tree)
    return ts[0] if ts else None


# -- formulas: fn(args, kwargs, out) -> (macs, elementwise_flops[, activations]) ----------------------------------
Formula = Callable[[tuple, dict, Any], tuple[int, ...]]
FORMULAS: dict[str, Formula] = {}


def _formula(*names: str) -> Callable[[Formula], Formula]:
    def wrap(fn: Formula) -> Formula:
        for n in names:
            FORMULAS[n] = fn
        return fn
    return wrap


def _conv(x: torch.Tensor, w: torch.Tensor, bias: Any, out: torch.Tensor, transposed: bool) -> tuple[int, int]:
    # weight (C_out, C_in/groups, *k); transposed (C_in, C_out/groups, *k): every output (input, when
    # transposed) element takes prod(weight.shape[1:]) multiply-accumulates.
    per = math.prod(w.shape[1:])
    macs = (x.numel() if transposed else out.numel()) * per
    return macs, out.numel() if isinstance(bias, torch.Tensor) else 0


@_formula("aten.convolution", "aten._convolution", "aten.convolution_overrideable", "aten.cudnn_convolution")
def _convolution(args, kwargs, out):
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return _conv(args[0], args[1], bias, out, transposed)


@_formula("aten._slow_conv2d_forward", "aten._conv_depthwise2d", "aten.slow_conv_dilated2d",
          "aten.slow_conv3d_forward", "aten.thnn_conv2d")
def _conv_bias3(args, kwargs, out):  # (input, weight, kernel_size, bias, ...)
    return _conv(args[0], args[1], args[3] if len(args) > 3 else kwargs.get("bias"), _first_tensor(out), False)


@_formula("aten.mkldnn_convolution")
def _mkldnn_conv(args, kwargs, out):  # (input, weight, bias, ...)
    return _conv(args[0], args[1], args[2] if len(args) > 2 else kwargs.get("bias"), out, False)


@_formula("aten.slow_conv_transpose2d", "aten.slow_conv_transpose3d")
def _conv_transpose_slow(args, kwargs, out):  # (input, weight, kernel_size, bias, ...)
    return _conv(args[0], args[1], args[3] if len(args) > 3 else kwargs.get("bias"), out, True)


@_formula("aten.mm", "aten.bmm", "aten.matmul", "aten.mv", "aten.dot", "aten.vdot")
def _matmul(args, kwargs, out):
    return _numel(out) * args[0].shape[-1], 0


@_formula("aten.addmm", "aten.baddbmm", "aten.addbmm", "aten.addmv")
def _addmatmul(args, kwargs, out):  # (bias, a, b): one add per output element for the bias
    n = _numel(out)
    k = args[1].shape[-1]
    if args[1].ndim == 3 and out.ndim == 2:  # addbmm sums over the batch too
        k *= args[1].shape[0]
    return n * k, n


@_formula("aten.linear")
def _linear(args, kwargs, out):  # (input, weight, bias)
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return _numel(out) * args[1].shape[-1], _numel(out) if isinstance(bias, torch.Tensor) else 0


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> tuple[int, int]:
    # q (..., Hq, Sq, D), k (..., Hkv, Sk, D), v (..., Hkv, Sk, Dv); grouped-query heads broadcast.
    scores = q.numel() // q.shape[-1] * k.shape[-2]
    macs = scores * q.shape[-1] + scores * v.shape[-1]
    # scale + softmax (5) per score, plus the mask add; activations: the scores and the output, as on the math
    # path's two bmm
    ew = scores * (1 + ELEMENTWISE_COST["aten._softmax"]) + (scores if isinstance(mask, torch.Tensor) else 0)
    return macs, ew, scores + scores // k.shape[-2] * v.shape[-1]


@_formula("aten._scaled_dot_product_flash_attention_for_cpu", "aten._scaled_dot_product_flash_attention",
          "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_cudnn_attention",
          "aten._scaled_dot_product_fused_attention_overrideable", "aten._scaled_dot_product_attention_math",
          "aten.scaled_dot_product_attention")
def _sdpa(args, kwargs, out):
    q, k, v = args[:3]
    mask = kwargs.get("attn_mask", kwargs.get("attn_bias"))
    if mask is None and len(args) > 3 and isinstance(args[3], torch.Tensor):
        mask = args[3]
    return _attention(q, k, v, mask)


def _fft(real_shape: Sequence[int], dims: Sequence[int]) -> int:
    n = math.prod(real_shape[d] for d in dims)
    return math.prod(real_shape) * max(math.ceil(math.log2(n)), 1) if n > 1 else 0


@_formula("aten._fft_r2c")
def _fft_r2c(args, kwargs, out):  # (input, dim, normalization, onesided)
    x, dims, norm = args[0], args[1], args[2]
    return _fft(x.shape, dims), (_numel(out) if norm else 0)


@_formula("aten._fft_c2r")
def _fft_c2r(args, kwargs, out):  # (input, dim, normalization, last_dim_size)
    dims, norm = args[1], args[2]
    return _fft(out.shape, dims), (_numel(out) if norm else 0)


@_formula("aten._fft_c2c")
def _fft_c2c(args, kwargs, out):  # (input, dim, normalization, forward): complex = 2 real values
    x, dims, norm = args[0], args[1], args[2]
    return 2 * _fft(x.shape, dims), (_numel(out) if norm else 0)


# Element-wise ops: FLOPs per output element. One elementary arithmetic, comparison or special function
# (exp, log, erf, tanh, sigmoid, sqrt, ...) is 1; composite activations count the steps of their formula.
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


def _elementwise(cost: int) -> Formula:
    def fn(args, kwargs, out):
        o = _first_tensor(out)
        n = _numel(o)
        if o is not None and o.is_complex():  # complex: a product is 4 mul + 2 add, others act on 2 parts
            n *= 6 if cost == 1 and fn.__name__ in ("aten.mul", "aten.div") else 2
        return 0, cost * n
    return fn


for _name, _cost in ELEMENTWISE_COST.items():
    FORMULAS[_name] = _elementwise(_cost)
    FORMULAS[_name].__name__ = _name


@_formula("aten.gelu")
def _gelu(args, kwargs, out):
    approximate = args[1] if len(args) > 1 else kwargs.get("approximate", "none")
    return 0, _numel(out) * (_GELU_TANH if approximate == "tanh" else _GELU_ERF)


# Reductions: FLOPs per *input* element (mean and norms add one per output element for the division / root).
_REDUCTION_COST = {"sum": 1, "nansum": 1, "mean": 1, "nanmean": 1, "prod": 1, "amax": 1, "amin": 1, "max": 1,
                   "min": 1, "aminmax": 2, "argmax": 1, "argmin": 1, "any": 1, "all": 1, "cumsum": 1, "cumprod": 1,
                   "logsumexp": 3, "var": 3, "std": 3, "var_mean": 3, "std_mean": 3, "norm": 2,
                   "linalg_vector_norm": 2, "count_nonzero": 1}
_REDUCTION_FINISH = {"mean", "nanmean", "var", "std", "var_mean", "std_mean", "norm", "linalg_vector_norm"}


def _reduction(name: str) -> Formula:
    def fn(args, kwargs, out):
        finish = sum(_numel(o) for o in _tensors(out)) if name in _REDUCTION_FINISH else 0
        return 0, _REDUCTION_COST[name] * _numel(args[0]) + finish
    return fn


for _name in _REDUCTION_COST:
    FORMULAS[f"aten.{_name}"] = _reduction(_name)


# Normalisation: statistics from the data 3 per element (sum, subtract-and-square, sum), normalising 2
# (subtract mean, multiply by 1/std), the affine 1 per element for each of weight and bias.
def _norm_cost(n: int, batch_stats: bool, weight: Any, bias: Any) -> int:
    return n * (3 * batch_stats + 2 + isinstance(weight, torch.Tensor) + isinstance(bias, torch.Tensor))


@_formula("aten.native_layer_norm")
def _layer_norm(args, kwargs, out):  # (input, normalized_shape, weight, bias, eps)
    return 0, _norm_cost(args[0].numel(), True, args[2], args[3])


@_formula("aten.native_group_norm")
def _group_norm(args, kwargs, out):  # (input, weight, bias, N, C, HxW, group, eps)
    return 0, _norm_cost(args[0].numel(), True, args[1], args[2])


@_formula("aten.native_batch_norm", "aten._native_batch_norm_legit", "aten._native_batch_norm_legit_functional",
          "aten.batch_norm", "aten.instance_norm")
def _batch_norm(args, kwargs, out):
    # native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps);
    # _native_batch_norm_legit without running stats: (input, weight, bias, training, momentum, eps)
    training = next((a for a in args[3:] if isinstance(a, bool)), True)
    return 0, _norm_cost(args[0].numel(), training, args[1], args[2])


@_formula("aten._native_batch_norm_legit_no_training")
def _batch_norm_eval(args, kwargs, out):
    return 0, _norm_cost(args[0].numel(), False, args[1], args[2])


@_formula("aten.native_layer_norm_backward", "aten.native_group_norm_backward", "aten.native_batch_norm_backward")
def _norm_backward(args, kwargs, out):
    return 0, 8 * _numel(args[0])


# Pooling: a window of k elements costs k per output (k - 1 adds and a divide; k - 1 compares for max,
# counted as k). The full window is charged at the borders too.
def _pool(ndim: int) -> Formula:
    def fn(args, kwargs, out):
        kernel = list(args[1] if len(args) > 1 else kwargs["kernel_size"])
        return 0, _numel(_first_tensor(out)) * math.prod(kernel * ndim if len(kernel) == 1 else kernel)
    return fn


for _op in ("avg_pool", "max_pool", "max_pool{}_with_indices"):
    for _nd in (1, 2, 3):
        _name = f"aten.{_op}{_nd}d" if "{}" not in _op else f"aten.{_op.format(f'{_nd}d')}"
        FORMULAS[_name] = _pool(_nd)


@_formula("aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d", "aten.adaptive_avg_pool1d",
          "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d", "aten.adaptive_max_pool1d")
def _adaptive_pool(args, kwargs, out):
    return 0, _numel(args[0]) + _numel(_first_tensor(out))


# Interpolation: FLOPs per output element for the weighted taps (bilinear 4 taps = 4 mul + 3 add).
_INTERP_COST = {"upsample_nearest1d": 0, "upsample_nearest2d": 0, "upsample_nearest3d": 0,
                "_upsample_nearest_exact1d": 0, "_upsample_nearest_exact2d": 0, "_upsample_nearest_exact3d": 0,
                "upsample_linear1d": 3, "upsample_bilinear2d": 7, "_upsample_bilinear2d_aa": 7,
                "upsample_trilinear3d": 15, "upsample_bicubic2d": 31, "_upsample_bicubic2d_aa": 31,
                "grid_sampler_2d": 7, "grid_sampler_3d": 15}
for _name, _cost in _INTERP_COST.items():
    FORMULAS[f"aten.{_name}"] = _elementwise(_cost)


@_formula("aten.col2im")
def _col2im(args, kwargs, out):  # overlapping patches are summed
    return 0, _numel(args[0])


# Views and metadata: no work, no bytes.
ZERO_COST_OPS: frozenset[str] = frozenset(f"aten.{n}" for n in (
    "view", "_unsafe_view", "reshape", "_reshape_alias", "view_as", "permute", "transpose", "t", "expand",
    "expand_as", "squeeze", "unsqueeze", "split", "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes",
    "chunk", "unsafe_chunk", "tensor_split", "unbind", "slice", "select", "narrow", "detach", "detach_", "alias",
    "as_strided", "unfold", "movedim", "diagonal", "flatten", "unflatten", "view_as_real", "view_as_complex",
    "real", "imag", "_conj", "conj", "resolve_conj", "resolve_neg", "_neg_view", "lift_fresh", "lift",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_to_copy_noop", "set_",
    "_local_scalar_dense", "item", "is_same_size", "_has_compatible_shallow_copy_type", "clone_noop",
    "_assert_async", "_assert_tensor_metadata", "sym_constrain_range", "_functional_sym_constrain_range",
    "_nested_tensor_from_mask", "dim", "size", "stride", "numel", "is_contiguous", "_version",
))

# Data movement: bytes in and out, no arithmetic.
DATA_MOVEMENT_OPS: frozenset[str] = frozenset(f"aten.{n}" for n in (
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
    "triu_indices", "nonzero", "unique", "_unique2", "randperm", "randint", "rand", "randn", "bernoulli_p",
    "view_copy", "permute_copy", "transpose_copy", "expand_copy", "t_copy", "unsqueeze_copy", "squeeze_copy",
    "alias_copy", "slice_copy", "select_copy", "detach_copy", "_reshape_copy", "unfold_copy",
))

# size/stride queries that a dispatch mode must not handle
_METADATA_QUERIES = {
    torch.ops.aten.sym_is_contiguous.default, torch.ops.aten.is_contiguous.default,
    torch.ops.aten.is_contiguous.memory_format, torch.ops.aten.is_strides_like_format.default,
    torch.ops.aten.is_non_overlapping_and_dense.default, torch.ops.aten.size.default,
    torch.ops.aten.sym_size.default, torch.ops.aten.stride.default, torch.ops.aten.sym_stride.default,
    torch.ops.aten.storage_offset.default, torch.ops.aten.sym_storage_offset.default,
    torch.ops.aten.numel.default, torch.ops.aten.sym_numel.default, torch.ops.aten.dim.default,
    torch.ops.prim.layout.default, torch.ops.prim.device.default,
}

def op_name(func: Any) -> str:
    """'aten.add' for torch.ops.aten.add.Tensor, 'aten.add_' for the in-place overload, 'mylib.op' for others."""
    packet = getattr(func, "_overloadpacket", func)
    return str(packet)


def _base_name(name: str) -> str:
    """In-place and out= variants share the formula of the functional op: 'aten.add_' -> 'aten.add'."""
    if name.endswith("_") and not _known(name) and _known(name[:-1]):
        return name[:-1]
    return name


def _known(name: str) -> bool:
    return name in FORMULAS or name in ZERO_COST_OPS or name in DATA_MOVEMENT_OPS


def _fvcore_extra(name: str, args: tuple, outs: list[torch.Tensor]) -> int:
    """fvcore's charge for the non-MAC ops its default handles price (jit_handles.py, fvcore 0.1.5)."""
    if name == "aten.native_layer_norm":
        return args[0].numel() * (5 if args[2] is not None else 4)
    if name == "aten.native_group_norm":
        return args[0].numel() * (5 if args[1] is not None else 4)
    if name in ("aten.native_batch_norm", "aten._native_batch_norm_legit", "aten._native_batch_norm_legit_no_training",
                "aten._native_batch_norm_legit_functional"):
        training = name != "aten._native_batch_norm_legit_no_training" and \
            next((a for a in args[3:] if isinstance(a, bool)), True)
        return args[0].numel() * ((5 if training else 2) if args[1] is not None else (4 if training else 1))
    if name in ("aten._adaptive_avg_pool2d", "aten.adaptive_avg_pool2d"):
        return args[0].numel()
    if name == "aten.upsample_nearest2d":
        return outs[0].numel()
    if name in ("aten.upsample_bilinear2d", "aten.grid_sampler_2d"):
        return 4 * outs[0].numel()
    return 0


# -- the dispatch mode -------------------------------------------------------------------------------------------
class _CountingMode(TorchDispatchMode):
    def __init__(self, module_stack: list[tuple[str, str]]) -> None:
        super().__init__()
        self.stack = module_stack
        self.records: list[OpRecord] = []
        self.uncounted: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA_QUERIES:
            return NotImplemented
        name = op_name(func)
        base = _base_name(name)
        formula = FORMULAS.get(base)
        kind = "formula" if formula else "zero" if base in ZERO_COST_OPS else \
            "move" if base in DATA_MOVEMENT_OPS else None
        if kind is None:  # a composite op without a formula: count its parts instead
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        self._record(name, kind, formula, args, kwargs, out)
        return out

    def _record(self, name: str, kind: str | None, formula: Formula | None, args, kwargs, out) -> None:
        module, module_type = self.stack[-1]
        outs = _tensors(out)
        rec = OpRecord(name, module, module_type, out_shape=tuple(outs[0].shape) if outs else ())
        if kind is None:
            self.uncounted[name] = self.uncounted.get(name, 0) + 1
        if kind != "zero":
            ins = _tensors((args, kwargs))
            rec.bytes_read = sum(_footprint(t) for t in ins)
            rec.bytes_written = sum(_footprint(t) for t in outs)
        if kind == "formula":
            macs, ew, *acts = formula(args, kwargs, out)
            rec.macs, rec.flops, rec.elementwise_flops = int(macs), 2 * int(macs), int(ew)
            if macs:
                rec.activations = int(acts[0]) if acts else outs[0].numel()
            rec.fvcore_macs = rec.macs + _fvcore_extra(_base_name(name), args, outs)
        self.records.append(rec)


# -- the public entry points -------------------------------------------------------------------------------------
def count_params(model: nn.Module, trainable: bool | None = None) -> int:
    """Parameters of `model` (each shared tensor once); `trainable` True/False counts only those that do/don't
    require grad."""
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)


@contextlib.contextmanager
def _module_stack(model: nn.Module, stack: list[tuple[str, str]]):
    handles = []

    def push(name: str, type_name: str):
        def pre(mod, args):
            stack.append((name, type_name))
        return pre

    def pop(mod, args, output):
        if len(stack) > 1:
            stack.pop()

    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(push(name, type(mod).__name__)))
        handles.append(mod.register_forward_hook(pop, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _train_mode(model: nn.Module, train: bool):
    modes = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _resolve_model(model: nn.Module | str) -> tuple[nn.Module, str]:
    if isinstance(model, str):
        from ..models import create_model, model_card
        with torch.device("meta"):
            built = create_model(model)
        return built, model_card(model).name
    if not isinstance(model, nn.Module):
        raise ValueError(f"count() expects an nn.Module or a registered model name; got {type(model).__name__}")
    return model, getattr(model, "model_name", type(model).__name__)


def _default_input_size(model: nn.Module) -> tuple[int, ...]:
    card = getattr(model, "card", None)
    if card is not None:
        return (1, *card.input_size)
    return (1, 3, 224, 224)


def _state_on(model: nn.Module, device: torch.device, dtype: torch.dtype, train: bool) -> dict[str, torch.Tensor]:
    """Parameters and buffers as `device` / `dtype` tensors (no copy when already there); on meta, empty."""
    state = {}
    named = itertools.chain(model.named_parameters(remove_duplicate=False),
                            model.named_buffers(remove_duplicate=False))
    for name, t in named:
        dt = dtype if t.is_floating_point() else t.dtype
        if device.type == "meta":
            new = torch.empty_like(t, device="meta", dtype=dt)
        elif isinstance(t, nn.Parameter):
            new = t.detach().to(device=device, dtype=dt)
        else:  # buffers are copied so that a training-mode pass leaves the model's running statistics alone
            new = t.detach().to(device=device, dtype=dt, copy=True)
        if isinstance(t, nn.Parameter):
            new.requires_grad_(train and t.requires_grad and new.is_floating_point())
        state[name] = new
    return state


def count(model: nn.Module | str, input_size: Sequence[int] | None = None, *, inputs: Any = None,
          dtype: torch.dtype = torch.float32, device: str | torch.device = "meta", train: bool = False) -> CountResult:
    """Count one forward pass of `model` operator by operator.

    model: an nn.Module (left unchanged: its parameters are swapped for `device` / `dtype` tensors only for
        the call) or a registered model name, built on the meta device.
    input_size: (B, C, H, W), or (C, H, W) for batch 1. Default: batch 1 at the model card's input size
        (`model.card`, set by `create_model`), else 1x3x224x224.
    inputs: a tensor or tuple of tensors to pass instead (moved to `device` / `dtype`).
    dtype: floating dtype of parameters, buffers and inputs; bytes follow from it.
    device: "meta" (default: shapes only, nothing computed or allocated) or a real device, where the model
        really runs.
    train: count a forward pass in training mode (batch statistics, dropout, grad enabled). Backward is not
        counted.
    """
    model, model_name = _resolve_model(model)
    device = torch.device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    if inputs is None:
        size = tuple(int(s) for s in (input_size if input_size is not None else _default_input_size(model)))
        if len(size) == 3:
            size = (1, *size)
        if len(size) < 2 or any(s < 1 for s in size):
            raise ValueError(f"input_size must be (B, C, H, W) or (C, H, W) with positive sizes; got {input_size}")
        inputs = (torch.empty(size, device="meta", dtype=dtype) if device.type == "meta"
                  else torch.randn(size, device=device, dtype=dtype),)
    else:
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)

        def place(x):
            if not isinstance(x, torch.Tensor):
                return x
            dt = dtype if x.is_floating_point() else x.dtype
            return torch.empty_like(x, device="meta", dtype=dt) if device.type == "meta" else x.to(device, dt)
        inputs = tuple(place(x) for x in inputs)
        size = tuple(inputs[0].shape) if isinstance(inputs[0], torch.Tensor) else ()

    state = _state_on(model, device, dtype, train)
    stack: list[tuple[str, str]] = [("", type(model).__name__)]
    mode = _CountingMode(stack)
    with _train_mode(model, train), _module_stack(model, stack), torch.set_grad_enabled(train), mode:
        torch.func.functional_call(model, state, inputs, strict=False, tie_weights=True)
    return CountResult.from_records(mode.records, mode.uncounted, params=count_params(model), input_size=size,
                                    dtype=str(dtype).replace("torch.", ""), model_name=model_name, train=train,
                                    device=str(device))
