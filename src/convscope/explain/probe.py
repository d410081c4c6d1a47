"""Linear probes: off-the-shelf features (Razavian et al., "CNN Features off-the-shelf", 1403.6382) from any
layer of any model or checkpoint, read by a logistic-regression or k-nearest-neighbour classifier.

Features are a feature_info tap's map, global-average pooled to one vector per image (token models included:
the map comes from `forward_intermediates`), or the pre-logits vector (`layer="pre_logits"`). The logistic probe
standardises the features with the training set's statistics and fits a multinomial logistic regression with
an L2 penalty by full-batch L-BFGS; the k-NN probe votes among the k most cosine-similar training features,
each vote weighted by exp(similarity / temperature) (the weighted k-NN of DINO, 2104.14294).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model
from .taps import check_images, eval_mode

PROBES = ("logistic", "knn")


def load_model(model: nn.Module | str, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """`model` itself, or the registered model of that name with `checkpoint`'s weights (a local file)."""
    if isinstance(model, nn.Module):
        if checkpoint is not None:
            raise ValueError("give either a model object or a model name with checkpoint=, not both")
        return model
    if not isinstance(model, str):
        raise TypeError(f"model must be an nn.Module or a registered model name; got {type(model).__name__}")
    return create_model(model, pretrained=None if checkpoint is None else os.fspath(checkpoint))


def _features(model: nn.Module, x: torch.Tensor, layer: int | str) -> torch.Tensor:
    if layer == "pre_logits":
        return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
    (fmap,) = model.forward_intermediates(x, indices=[layer], intermediates_only=True)
    return fmap.mean((2, 3))


def extract_features(model: nn.Module | str, images: torch.Tensor | Iterable[torch.Tensor], layer: int | str = -1,
                     checkpoint: str | os.PathLike | None = None, batch_size: int = 64) -> torch.Tensor:
    """(N, D) features of `images` (a batch, or an iterable of batches) from feature_info tap `layer`, pooled
    over positions, or from the pre-logits vector with `layer="pre_logits"`. `model`: a model, or a registered
    name loaded with `checkpoint`. Runs in eval mode without gradients."""
    model = load_model(model, checkpoint)
    n = len(getattr(model, "feature_info", []))
    if layer != "pre_logits" and (isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n):
        raise ValueError(f"layer must be a feature_info index in {-n}..{n - 1} or 'pre_logits'; got {layer!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    batches = [images] if isinstance(images, torch.Tensor) else images
    out = []
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            check_images(model, batch)
            out.extend(_features(model, batch[i:i + batch_size], layer) for i in range(0, len(batch), batch_size))
    if not out:
        raise ValueError("no images given")
    return torch.cat(out)


@dataclass(frozen=True)
class ProbeResult:
    """A fitted probe and how it does on the test features."""

    accuracy: float  #: fraction of test features classified correctly
    predictions: torch.Tensor  #: (N_test,) predicted classes
    kind: str


def _check_split(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"{what} features must be a float tensor (N, D); got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point() or (y < 0).any():
        raise ValueError(f"{what} labels must be {x.shape[0]} non-negative integer classes, one per feature row")


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float = 1e-4,
                 max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight, bias, mean, std) of a multinomial logistic regression on standardised `x`: minimises mean
    cross-entropy + weight_decay / 2 * |weight|^2 by L-BFGS (strong Wolfe line search), from zeros."""
    x = x.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-12)
    z = (x - mean) / std
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + weight_decay / 2 * w.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach(), mean, std


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int = 20,
                temperature: float = 0.07) -> torch.Tensor:
    """Weighted k-NN on cosine similarity: class scores sum exp(sim / temperature) over the k nearest."""
    sim = F.normalize(test_x.double(), dim=1) @ F.normalize(train_x.double(), dim=1).T
    top, idx = sim.topk(min(k, train_x.shape[0]), dim=1)
    scores = torch.zeros(test_x.shape[0], int(train_y.max()) + 1, dtype=torch.float64)
    scores.scatter_add_(1, train_y[idx], torch.exp(top / temperature))
    return scores.argmax(1)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 kind: str = "logistic", weight_decay: float = 1e-4, k: int = 20,
                 temperature: float = 0.07) -> ProbeResult:
    """Fit a `kind` probe (one of PROBES) on the training features and labels and score it on the test ones."""
    if kind not in PROBES:
        raise ValueError(f"kind must be one of {', '.join(PROBES)}; got {kind!r}")
    _check_split(train_x, train_y, "training")
    _check_split(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"training and test features differ in width: {train_x.shape[1]} and {test_x.shape[1]}")
    if kind == "logistic":
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}")
        w, b, mean, std = fit_logistic(train_x, train_y, int(train_y.max()) + 1, weight_decay)
        pred = (((test_x.double() - mean) / std) @ w.T + b).argmax(1)
    else:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or not temperature > 0:
            raise ValueError(f"k must be a positive integer and temperature > 0; got k={k!r}, "
                             f"temperature={temperature!r}")
        pred = knn_predict(train_x, train_y, test_x, k, temperature)
    return ProbeResult((pred == test_y).double().mean().item(), pred, kind)
