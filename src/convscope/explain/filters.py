"""Filter statistics after the CNN Filter DB (Gavrikov & Keuper, "CNN Filter DB: An Empirical Investigation of
Trained Convolutional Filters", CVPR 2022, 2203.15331): every 3x3 kernel slice of every convolution, per layer.

- distribution: each layer's filters (n, 9) projected on one orthonormal basis, the right singular vectors of
  all the model's 3x3 filters together (principal components, largest first), so that layers can be compared;
- sparsity: the fraction of a layer's filters whose largest |weight| is below `sparse_tol` (1%) of the layer's;
- variance entropy: the entropy of the layer's singular-value spectrum, -sum p_i log p_i with
  p_i = s_i^2 / sum s^2, divided by log 9: 0 when all filters are multiples of one pattern (no diversity), near
  1 for random, untrained filters;
- degenerate-filter ratio: the fraction of filters that are sparse or repeat the layer's dominant pattern
  (cosine similarity above `repeat_cos`, 0.99, with the first principal direction of that layer);
- distribution shift between two layers: for each basis coefficient, the KL divergence between the two layers'
  coefficient histograms (shared bins, add-one smoothing); the shift is their mean.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from .probe import load_model


@dataclass(frozen=True)
class LayerFilters:
    """The 3x3 filters of one convolution and their statistics."""

    name: str
    coefficients: torch.Tensor  #: (n, 9) filters on the model's shared basis
    sparsity: float
    entropy: float  #: normalised variance entropy in [0, 1]
    degenerate_ratio: float


@dataclass(frozen=True)
class FilterStats:
    """Per-layer filter statistics of a model, on one basis."""

    basis: torch.Tensor  #: (9, 9) rows: the principal directions of all the model's 3x3 filters
    layers: list[LayerFilters]

    def shift(self, a: int | str, b: int | str, bins: int = 32) -> float:
        """The distribution shift from layer `a` to layer `b` (index or name): mean KL over the coefficients."""
        return distribution_shift(self._layer(a).coefficients, self._layer(b).coefficients, bins)

    def _layer(self, key: int | str) -> LayerFilters:
        if isinstance(key, int) and -len(self.layers) <= key < len(self.layers):
            return self.layers[key]
        for layer in self.layers:
            if layer.name == key:
                return layer
        raise ValueError(f"no 3x3 layer {key!r}; the layers are 0..{len(self.layers) - 1} or their names")


def conv3x3_filters(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: (n, 9) filters} for every Conv2d with a 3x3 kernel (each input-channel slice is a filter)."""
    return {name: m.weight.detach().reshape(-1, 9).double() for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)}


def variance_entropy(filters: torch.Tensor) -> float:
    """Entropy of the normalised squared singular values of (n, 9) filters, divided by log 9 (0..1)."""
    s2 = torch.linalg.svdvals(filters).pow(2)
    if s2.sum() == 0:
        return 0.0
    p = s2 / s2.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum() / math.log(9))


def distribution_shift(a: torch.Tensor, b: torch.Tensor, bins: int = 32) -> float:
    """Mean over the columns of KL(P_a || P_b) between the histograms of (n, k) coefficients `a` and `b` on
    shared bins spanning both, each count smoothed by one."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"coefficients must have the same width; got {a.shape[1]} and {b.shape[1]}")
    kls = []
    for j in range(a.shape[1]):
        lo, hi = float(min(a[:, j].min(), b[:, j].min())), float(max(a[:, j].max(), b[:, j].max()))
        hi = hi if hi > lo else lo + 1.0
        pa = torch.histc(a[:, j].double(), bins, lo, hi) + 1
        pb = torch.histc(b[:, j].double(), bins, lo, hi) + 1
        pa, pb = pa / pa.sum(), pb / pb.sum()
        kls.append(float((pa * (pa / pb).log()).sum()))
    return sum(kls) / len(kls)


def _layer_stats(name: str, f: torch.Tensor, basis: torch.Tensor, sparse_tol: float,
                 repeat_cos: float) -> LayerFilters:
    peak = f.abs().amax(1)
    sparse = peak < sparse_tol * peak.max() if peak.max() > 0 else torch.ones_like(peak, dtype=torch.bool)
    main = torch.linalg.svd(f, full_matrices=False).Vh[0]
    cos = (f @ main).abs() / f.norm(dim=1).clamp_min(1e-30)
    degenerate = sparse | (cos > repeat_cos)
    return LayerFilters(name, f @ basis.T, float(sparse.double().mean()), variance_entropy(f),
                        float(degenerate.double().mean()))


def filter_stats(model: nn.Module | str, checkpoint: str | os.PathLike | None = None, sparse_tol: float = 0.01,
                 repeat_cos: float = 0.99) -> FilterStats:
    """Statistics of every 3x3 convolution of `model` (a model, or a registered name loaded with `checkpoint`);
    see the module docstring. ValueError when it has no 3x3 convolution."""
    if not 0 < sparse_tol < 1 or not 0 < repeat_cos < 1:
        raise ValueError(f"sparse_tol and repeat_cos must be in (0, 1); got {sparse_tol!r}, {repeat_cos!r}")
    model = load_model(model, checkpoint)
    layers = conv3x3_filters(model)
    if not layers:
        raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)} has no 3x3 convolution")
    basis = torch.linalg.svd(torch.cat(list(layers.values())), full_matrices=False).Vh
    return FilterStats(basis, [_layer_stats(n, f, basis, sparse_tol, repeat_cos) for n, f in layers.items()])
