"""How official tables count MACs: the conventions a ModelCard can name, and the emulation of fvcore's
FlopCountAnalysis (its default handles, and HorNet's FFT handler) that the "fvcore" conventions need."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch._ops import OpOverloadPacket

from .formulas import aten, same_size

if TYPE_CHECKING:
    from .results import OpRecord, Totals

#: How official tables count, by the name a ModelCard gives in `macs_convention`.
MACS_CONVENTIONS: dict[str, str] = {
    "macs": "multiply-accumulates of convolution, matrix products, attention and FFTs only (`Totals.macs`)",
    "fvcore": "fvcore's FlopCountAnalysis with its default handles, which timm's tables and most official "
              "READMEs use: the MACs above (biases excluded) plus its charges for norms (LayerNorm / GroupNorm "
              "5 per element with a weight, 4 without; BatchNorm in eval 2 per element with a weight, 1 "
              "without), adaptive average pooling (1 per input element) and upsampling (nearest 1, bilinear 4 "
              "per output element); activations, element-wise arithmetic, softmax and plain pooling are free. "
              "Attention counts its two matrix products, as fvcore does on the official code's explicit "
              "`q @ k.T` and `attn @ v`; FFTs count what HorNet's calc_flops.py handler adds to fvcore for "
              "rfft2 / irfft2, N * C * ceil(log2 N) with (B, C, H, W) read as (B, H, W, C) "
              "(`Totals.fvcore_macs`)",
    "fvcore_manual_cf_ln": "'fvcore' run on official code that writes its channels-first LayerNorm out element "
                           "by element (HorNet's and ConvNeXt's `LayerNorm(data_format='channels_first')`: "
                           "mean, pow, sqrt), which fvcore does not price: as 'fvcore' without the norm charge "
                           "of convscope's channels-first `LayerNorm2d` modules",
}


def macs_under(convention: str, totals: Totals, records: Sequence[OpRecord]) -> int:
    """Total MACs of a count under one of `MACS_CONVENTIONS`."""
    if convention == "macs":
        return totals.macs
    if convention == "fvcore":
        return totals.fvcore_macs
    if convention == "fvcore_manual_cf_ln":
        return totals.fvcore_macs - sum(r.fvcore_macs - r.macs for r in records if _fvcore_free(r))
    raise ValueError(f"unknown MACs convention {convention!r}; expected one of {sorted(MACS_CONVENTIONS)}")


def _fvcore_free(rec: OpRecord) -> bool:
    """Under 'fvcore_manual_cf_ln': a channels-first LayerNorm, written out element-wise in the official code."""
    return rec.op == "aten.native_layer_norm" and rec.module_type == "LayerNorm2d"


def fvcore_macs(op: OpOverloadPacket, args: tuple, outs: list[torch.Tensor], macs: int) -> int:
    """What fvcore counts for one call of `op` (a functional packet) that does `macs` multiply-accumulates."""
    return _fvcore_fft(op, args, macs) + _fvcore_extra(op, args, outs)


_BATCH_NORMS = (aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training,
                aten._native_batch_norm_legit_functional)


def _fvcore_extra(op: OpOverloadPacket, args: tuple, outs: list[torch.Tensor]) -> int:
    """fvcore's charge for the non-MAC ops its default handles price (jit_handles.py, fvcore 0.1.5)."""
    if op is aten.native_layer_norm:
        return args[0].numel() * (5 if args[2] is not None else 4)
    if op is aten.native_group_norm:
        return args[0].numel() * (5 if args[1] is not None else 4)
    if op in _BATCH_NORMS:
        training = op is not aten._native_batch_norm_legit_no_training and \
            next((a for a in args[3:] if isinstance(a, bool)), True)
        return args[0].numel() * ((5 if training else 2) if args[1] is not None else (4 if training else 1))
    if op in (aten._adaptive_avg_pool2d, aten.adaptive_avg_pool2d):
        return args[0].numel()
    if op in (aten.upsample_nearest2d, aten.upsample_bilinear2d) and same_size(args[0], outs[0]):
        return 0  # a resize to the same size, which official code skips
    if op is aten.upsample_nearest2d:
        return outs[0].numel()
    if op in (aten.upsample_bilinear2d, aten.grid_sampler_2d):
        return 4 * outs[0].numel()
    return 0


def _fvcore_fft(op: OpOverloadPacket, args: tuple, macs: int) -> int:
    """HorNet's calc_flops.py handler for rfft2 / irfft2: `B, H, W, C = input.shape; N = H * W;
    N * C * ceil(log2 N)` on the real input of rfft2 and the complex input of irfft2, here times the batch."""
    x = args[0]
    if op not in (aten._fft_r2c, aten._fft_c2r) or x.ndim != 4:
        return macs
    b, h, w, c = x.shape
    return b * h * w * c * max(math.ceil(math.log2(h * w)), 1) if h * w > 1 else 0
