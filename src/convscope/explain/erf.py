"""Effective receptive field, measured as RepLKNet does (Ding et al., 2203.06717, `erf/visualize_erf.py` and
`erf/analyze_erf.py`).

For each image, the contribution of input pixel (i, j) is sum_c ReLU(d y / d x[c, i, j]) with
y = sum_k ReLU(F[k, h/2, w/2]), the central position of a stage's map F summed over its channels. Contributions
are averaged over the images (an image whose gradient is not finite is skipped, as there), then log-scaled and
normalised, m = log10(1 + s) / max log10(1 + s), and the high-contribution area ratio at threshold t is the area
of the smallest centred square whose share of the map's total exceeds t, as a fraction of the input's area.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .taps import BatchNormGradFix, check_images, eval_mode

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


@dataclass(frozen=True)
class ERF:
    """An effective receptive field aggregated over `images` inputs of one size."""

    map: torch.Tensor  #: (H, W) log10(1 + contribution), scaled so that its maximum is 1
    contribution: torch.Tensor  #: (H, W) mean over the images of sum_c ReLU(gradient)
    area_ratio: dict[float, float]  #: threshold -> high-contribution area ratio
    images: int  #: images aggregated (those with a non-finite gradient are skipped)
    layer: int  #: the feature_info index whose central position was differentiated


def area_ratio(m: torch.Tensor, threshold: float) -> float:
    """The area of the smallest centred square of side 2i + 1 (i >= 1) holding more than `threshold` of the sum of
    `m` (H, W), as a fraction of H * W; 1.0 when no square up to side 2 (H // 2 - 1) + 1 does (RepLKNet's
    `get_rectangle`, which stops there)."""
    h, w = m.shape
    total = m.sum()
    for i in range(1, h // 2):
        inside = m[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i].sum()
        if inside / total > threshold:
            side = 2 * i + 1
            return side / h * side / w
    return 1.0


def _contributions(model: nn.Module, x: torch.Tensor, layer: int) -> torch.Tensor:
    """(B, H, W): sum_c ReLU(gradient of the central output, summed over channels) for each image."""
    x = x.detach().requires_grad_(True)
    with BatchNormGradFix():
        (fmap,) = model.forward_intermediates(x, indices=[layer], intermediates_only=True)
    h, w = fmap.shape[-2:]
    central = torch.relu(fmap[:, :, h // 2, w // 2]).sum()
    (grad,) = torch.autograd.grad(central, x)
    return torch.relu(grad).sum(1)


def _batches(images: torch.Tensor | Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    return [images] if isinstance(images, torch.Tensor) else images


def effective_receptive_field(model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], layer: int = -1,
                              thresholds: Sequence[float] = THRESHOLDS) -> ERF:
    """The ERF of feature_info tap `layer` (default the last stage) over `images`, a batch (N, C, H, W) or an
    iterable of batches of one size, with the area ratios at `thresholds` (each in (0, 1)). NCHW and token models
    alike: the stage map comes from the model's `forward_intermediates`."""
    n_taps = len(getattr(model, "feature_info", []))
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_taps <= layer < n_taps:
        raise ValueError(f"layer must be a feature_info index in {-n_taps}..{n_taps - 1}; got {layer!r}")
    if not thresholds or any(not 0 < float(t) < 1 for t in thresholds):
        raise ValueError(f"thresholds must be fractions strictly between 0 and 1; got {tuple(thresholds)}")
    total, count, size = None, 0, None
    with eval_mode(model):
        for x in _batches(images):
            check_images(model, x)
            if size is not None and tuple(x.shape[-2:]) != size:
                raise ValueError(f"every image must have the same size; got {size} and {tuple(x.shape[-2:])}")
            size = tuple(x.shape[-2:])
            c = _contributions(model, x, layer % n_taps).detach()
            c = c[torch.isfinite(c).flatten(1).all(1)]
            total = c.sum(0) if total is None else total + c.sum(0)
            count += c.shape[0]
    if count == 0:
        raise ValueError("no image gave a finite gradient (or none was given); nothing to aggregate")
    contribution = total / count
    m = torch.log10(contribution + 1)
    m = m / m.max().clamp_min(torch.finfo(m.dtype).tiny)
    ratios = {float(t): area_ratio(m, float(t)) for t in thresholds}
    return ERF(m, contribution, ratios, count, layer % n_taps)
