"""Output stride by dilation (DeepLab's atrous arithmetic): a backbone's last one or two downsamplings become
stride 1 and the later stages' spatial convs are dilated instead, so the stage maps' strides go from
(4, 8, 16, 32) to (4, 8, 16, 16) at output stride 16 and (4, 8, 8, 8) at output stride 8.

The arithmetic: let a stage see its input X at full resolution where the original network saw x[i] = X[D i]
(D, the product of the strides removed so far). A conv with stride s, kernel k and padding p computed
y[i] = sum_t w[t] x[s i + t - p] = sum_t w[t] X[D s i + D t - D p]; run with stride 1, dilation D and padding
D p before / D (k - 1 - p) after, it computes Y[j] = sum_t w[t] X[j + D t - D p], so y[i] = Y[D s i] and every
later layer sees a factor D s. A stride-1 conv with dilation r and padding p becomes dilation D r, padding D p.
Hence, for a network of convs and point-wise layers, the dilated network's output subsampled by the removed
factor equals the original output exactly (tests/heads pin this on ConvNeXt). Global operations (GRN, SE,
GroupNorm over all positions) see more positions and are not part of that identity.

Only the families whose stages after the stem are convolutions and point-wise layers take it (`DILATABLE`);
attention windows, pooling windows and fixed-size token mixers do not, and ask for a one-line ValueError. RepLKNet
and UniRepLKNet are left out too: their re-parameterisation merges the parallel kernels into the large one
assuming it is undilated, so a dilated model would lose its deploy form.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Families whose later stages are convs and point-wise layers, each stage a `downsample` and `blocks`.
DILATABLE = ("convnext", "convnextv2", "convformer", "identityformer", "inception_next")

#: Output strides a pure-conv backbone can be brought to.
OUTPUT_STRIDES = (8, 16)


class StrideFreeConv2d(nn.Conv2d):
    """A strided conv turned into a stride-1 conv dilated by `factor`, padded (before, after) =
    (factor * p, factor * (k - 1 - p)) per dimension so that its output at factor * s * i is the strided conv's
    output at i. Same parameters (and state-dict keys) as the conv it replaces."""

    def __init__(self, conv: nn.Conv2d, factor: int) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, 1, 0,
                         tuple(factor * d for d in conv.dilation), conv.groups, conv.bias is not None,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight = conv.weight
        self.bias = conv.bias
        (kh, kw), (ph, pw), (dh, dw) = conv.kernel_size, conv.padding, conv.dilation
        self.pad = (factor * pw, factor * (dw * (kw - 1) - pw), factor * ph, factor * (dh * (kh - 1) - ph))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pad), self.weight, self.bias)


def _dilate_conv_(conv: nn.Conv2d, factor: int, name: str) -> None:
    """Multiply a stride-1 conv's dilation and padding by `factor` (its padding must be centred)."""
    centred = all(p * 2 == d * (k - 1) for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation, strict=True))
    if not centred or conv.padding_mode != "zeros":
        raise ValueError(f"cannot dilate {name}: its padding {conv.padding} is not centred zero padding")
    conv.dilation = tuple(factor * d for d in conv.dilation)
    conv.padding = tuple(factor * p for p in conv.padding)


def _dilate_stage_(stage: nn.Module, factor_in: int, name: str) -> int:
    """Turn the stage's one strided conv (in its `downsample`) to stride 1 and dilate every spatial conv after it;
    return the factor the following stages see."""
    strided = [(n, m) for n, m in stage.named_modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1]
    if len(strided) != 1 or not strided[0][0].startswith("downsample."):
        raise ValueError(f"cannot dilate {name}: expected one strided conv in its downsample layer; "
                         f"found {[n for n, _ in strided]}")
    path, conv = strided[0]
    if conv.stride[0] != conv.stride[1]:
        raise ValueError(f"cannot dilate {name}: its downsampling stride {conv.stride} is not square")
    factor_out = factor_in * conv.stride[0]
    factor = factor_in
    for n, m in list(stage.named_modules()):
        if m is conv:
            parent, _, leaf = path.rpartition(".")
            setattr(stage.get_submodule(parent), leaf, StrideFreeConv2d(conv, factor_in))
            factor = factor_out
        elif isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1:
            _dilate_conv_(m, factor, f"{name}.{n}")
    return factor_out


def dilate_backbone_(extractor: nn.Module, output_stride: int, family: str) -> list[int]:
    """Bring a features_only backbone of a `DILATABLE` family to `output_stride` (8 or 16) in place; return the
    stage maps' new strides (and update its `feature_info`)."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES} (or None for the backbone's own); "
                         f"got {output_stride!r}")
    if family not in DILATABLE:
        raise ValueError(f"output_stride needs a pure-conv backbone ({', '.join(DILATABLE)}); "
                         f"family {family!r} has attention, pooling or fixed-size mixers in its later stages")
    model = extractor.model
    strides = [f["reduction"] for f in model.feature_info]
    if strides != [4 * 2 ** i for i in range(len(strides))]:
        raise ValueError(f"output_stride needs stage strides 4, 8, 16, 32; the backbone's are {strides}")
    factor = 1
    for i, info in enumerate(model.feature_info):
        if info["reduction"] > output_stride:
            factor = _dilate_stage_(model.stages[i], factor, f"stages.{i}")
            info["reduction"] = info["reduction"] // factor
    extractor.feature_info.info = [dict(model.feature_info[i], index=i) for i in extractor.out_indices]
    return extractor.feature_info.reduction()
