"""Exact counting by intercepting aten operators: MACs, FLOPs, element-wise work, bytes moved, activations.

`count(model)` runs one forward pass under a `TorchDispatchMode` and prices every aten call the dispatcher sees
with a formula of its input and output shapes. On the meta device (the default) nothing is computed or
allocated, so a 600M-parameter model costs a fraction of a second. Each call is attributed to the innermost
`nn.Module` that ran it.

Conventions (docs/conventions.md, "Counting"):

- **MACs**: one multiply-accumulate = 1, for convolution (every output position, padding included; grouped
  and depthwise convs count `C_in / groups` inputs per output), matrix products (mm, addmm, bmm, baddbmm,
  linear, matmul; einsum lowers to these), attention (`Q K^T` and `A V`) and FFTs. Biases are not MACs.
- **FLOPs** = 2 x MACs. **Element-wise FLOPs** are reported apart: bias adds, norms, activations, softmax,
  pooling, interpolation, arithmetic and reductions, priced per element by `ELEMENTWISE_COST` and the
  formulas of `counting.formulas` (one elementary arithmetic or special function, e.g. `exp`, `erf`, `tanh`,
  = 1).
- **FFTs** (`_fft_r2c`, `_fft_c2r`, `_fft_c2c`): `L * ceil(log2 N)` MACs for `L` real elements (the real side
  of the transform) transformed in signals of `N` points, the `N log N` cost HorNet's official `calc_flops.py`
  charges for `rfft2` / `irfft2` (which reads the (B, C, H, W) shape as (B, H, W, C) and so takes the log of
  C * H instead of H * W; the "fvcore" convention reproduces that formula exactly). Orthonormal scaling adds
  one element-wise FLOP per output element.
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

The package: `results` (OpRecord, Totals, CountResult), `formulas` (what each aten op costs, the free and
data-movement op lists), `conventions` (MACS_CONVENTIONS, what fvcore would count), `dispatch` (the mode that
records the calls); `count` and `count_params` are here.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ...models import resolve_model
from ..module_tracker import ModuleTracker
from .conventions import MACS_CONVENTIONS
from .dispatch import CountingMode
from .formulas import DATA_MOVEMENT_OPS, ELEMENTWISE_COST, FORMULAS, ZERO_COST_OPS
from .results import CountResult, OpRecord, Totals

__all__ = ["CountResult", "OpRecord", "Totals", "count", "count_params", "ELEMENTWISE_COST", "ZERO_COST_OPS",
           "DATA_MOVEMENT_OPS", "FORMULAS", "MACS_CONVENTIONS"]


def count_params(model: nn.Module, trainable: bool | None = None) -> int:
    """Parameters of `model` (each shared tensor once); `trainable` True/False counts only those that do/don't
    require grad."""
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)


@contextlib.contextmanager
def _train_mode(model: nn.Module, train: bool) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


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
    model, model_name = resolve_model(model, device="meta")
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
    tracker = ModuleTracker(model)
    mode = CountingMode(tracker)
    with _train_mode(model, train), tracker, torch.set_grad_enabled(train), mode:
        torch.func.functional_call(model, state, inputs, strict=False, tie_weights=True)
    return CountResult.from_records(mode.records, mode.uncounted, params=count_params(model), input_size=size,
                                    dtype=str(dtype).replace("torch.", ""), model_name=model_name, train=train,
                                    device=str(device))
