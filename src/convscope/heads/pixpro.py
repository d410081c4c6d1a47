"""PixPro pixel-level contrastive pre-training for any zoo model with a spatial last map (Xie et al., "Propagate
Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual Representation Learning", arXiv 2011.10043;
zdaxie/PixPro).

Two crops of each image go through the online branch (encoder, projector, pixel-propagation module) and a
momentum branch (encoder and projector, moving averages of the online ones, no gradient). A cell of one view's
last map and a cell of the other's are a positive pair when their centres, in the original image's normalised
coordinates, lie closer than `pos_ratio` times the larger cell diagonal of the two views; the loss is minus twice
the mean cosine of the online view's propagated features with the momentum view's projected features over the
positive pairs, symmetrised over the two views (the pixel-propagation consistency, PixPro's own loss; its optional
instance branch, weight 0 in the published 400-epoch recipe, is not built).

The defaults are the published recipe's (`tools/pixpro_base_r50_400ep.sh`): propagation sharpness p = 2, positive
radius 0.7, one 1x1 conv as the value transform, similarities clamped at 0, momentum 0.99 raised to 1 along a
half cosine over the run. The projector is the official one scaled to the encoder: 1x1 conv to twice the encoder's
channels (4,096 for ResNet-50's 2,048), BatchNorm, ReLU, 1x1 conv to `proj_dim` (256).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model, model_traits, resolve_name


def cell_centres(coords: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, 2) centres (x, y) of the cells of an h x w map over crops `coords` (B, 4): each crop's (x0, y0,
    x1, y1) in the original image's coordinates, normalised to [0, 1] (x0 > x1 for a horizontally flipped crop:
    its first column lies at the crop's right edge)."""
    x0, y0, x1, y1 = coords.unbind(1)
    j = torch.arange(w, dtype=coords.dtype, device=coords.device) + 0.5
    i = torch.arange(h, dtype=coords.dtype, device=coords.device) + 0.5
    cx = x0[:, None] + j[None] * ((x1 - x0) / w)[:, None]          # (B, w)
    cy = y0[:, None] + i[None] * ((y1 - y0) / h)[:, None]          # (B, h)
    return torch.stack([cx[:, None, :].expand(-1, h, -1), cy[:, :, None].expand(-1, -1, w)], -1).reshape(-1, h * w, 2)


def positive_pairs(coords_a: torch.Tensor, coords_b: torch.Tensor, h: int, w: int,
                   pos_ratio: float = 0.7) -> torch.Tensor:
    """(B, h*w, h*w) bool: cell i of view a and cell j of view b are a positive pair, their centres closer than
    `pos_ratio` times the larger of the two views' cell diagonals."""
    def diagonal(c: torch.Tensor) -> torch.Tensor:
        return torch.hypot((c[:, 2] - c[:, 0]) / w, (c[:, 3] - c[:, 1]) / h)

    dist = torch.cdist(cell_centres(coords_a, h, w), cell_centres(coords_b, h, w))
    return dist / torch.maximum(diagonal(coords_a), diagonal(coords_b)).view(-1, 1, 1) < pos_ratio


def pixpro_loss(online: torch.Tensor, target: torch.Tensor, coords_online: torch.Tensor, coords_target: torch.Tensor,
                pos_ratio: float = 0.7) -> torch.Tensor:
    """Minus twice the batch mean of each image's mean cosine over its positive pairs (an image with none adds 0).
    `online`, `target`: (B, C, h, w), unit length along C; `coords_*`: the views' crops as `cell_centres` takes."""
    b, c, h, w = online.shape
    pos = positive_pairs(coords_online, coords_target, h, w, pos_ratio).to(online.dtype)
    cos = torch.bmm(online.reshape(b, c, h * w).transpose(1, 2), target.reshape(b, c, h * w))
    per_image = (cos * pos).sum((1, 2)) / (pos.sum((1, 2)) + 1e-6)
    return -2 * per_image.mean()


class MLP2d(nn.Sequential):
    """1x1 conv, BatchNorm, ReLU, 1x1 conv: PixPro's projector (per position)."""

    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, cout, 1))


class PixelPropagation(nn.Module):
    """y_i = sum_j max(cos(x_i, x_j), clamp)^p g(x_j), g the value transform (identity, a 1x1 conv, or an MLP2d),
    its output normalised along channels first."""

    def __init__(self, dim: int, p: float = 2.0, clamp: float = 0.0, transform_layers: int = 1) -> None:
        super().__init__()
        if transform_layers not in (0, 1, 2):
            raise ValueError(f"PixPro transform_layers must be 0, 1 or 2; got {transform_layers}")
        if clamp < 0 and p != int(p):
            raise ValueError(f"PixPro clamp {clamp} lets similarities go negative: that needs a whole p; got {p}")
        self.p, self.clamp = float(p), float(clamp)
        self.value = (nn.Identity(), nn.Conv2d(dim, dim, 1), MLP2d(dim, dim, dim))[transform_layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        value = F.normalize(self.value(x), dim=1).reshape(b, c, h * w)
        unit = F.normalize(x, dim=1).reshape(b, c, h * w)
        sim = torch.bmm(unit.transpose(1, 2), unit).clamp(min=self.clamp)
        if self.p < 1:   # a fractional power of 0 has no gradient
            sim = sim + 1e-6
        return torch.bmm(value, sim.pow(self.p).transpose(1, 2)).reshape(b, c, h, w)


def _check_options(p: float, pos_ratio: float, momentum: float, total_steps: int) -> None:
    for ok, what in ((p > 0, f"p must be positive; got {p}"),
                     (pos_ratio > 0, f"pos_ratio must be positive; got {pos_ratio}"),
                     (0 <= momentum < 1, f"momentum must be in [0, 1); got {momentum}"),
                     (total_steps >= 1, f"total_steps must be at least 1; got {total_steps}")):
        if not ok:
            raise ValueError(f"PixPro {what}")


class PixPro(nn.Module):
    """PixPro pre-training of `model_name`'s encoder: `forward(view1, view2, coords1, coords2)` is the loss (and,
    in training mode with gradients on, first moves the momentum branch one step, as the official forward does).

    The encoder is `create_model(model_name, features_only=True, in_chans=...)`; its last map is the one used.
    total_steps: the forward passes of the run, over which the momentum rises from `momentum` to 1.
    model_kwargs go to `create_model` (and must be passed to it again to load `encoder_state_dict()`).
    """

    def __init__(self, model_name: str, *, in_chans: int = 3, proj_dim: int = 256, hidden_dim: int | None = None,
                 p: float = 2.0, pos_ratio: float = 0.7, clamp: float = 0.0, transform_layers: int = 1,
                 momentum: float = 0.99, total_steps: int = 1, **model_kwargs) -> None:
        super().__init__()
        _check_options(p, pos_ratio, momentum, total_steps)
        name = resolve_name(model_name)
        channels = model_traits(name, **model_kwargs).channels[-1]
        self.model_name, self.in_chans = name, in_chans
        self.pos_ratio, self.base_momentum, self.total_steps = float(pos_ratio), float(momentum), int(total_steps)
        self.encoder = create_model(name, features_only=True, in_chans=in_chans, **model_kwargs)
        self.projector = MLP2d(channels, hidden_dim or 2 * channels, proj_dim)
        self.propagation = PixelPropagation(proj_dim, p, clamp, transform_layers)
        self.encoder_target = copy.deepcopy(self.encoder).requires_grad_(False)
        self.projector_target = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def momentum_at(self, k: int) -> float:
        """The momentum of update `k`: 1 - (1 - m) (cos(pi k / K) + 1) / 2, m at the start and 1 at K."""
        return 1 - (1 - self.base_momentum) * (math.cos(math.pi * k / self.total_steps) + 1) / 2

    @torch.no_grad()
    def update_target(self) -> None:
        """One momentum step: target <- m target + (1 - m) online, m = momentum_at(updates); then updates += 1."""
        m = self.momentum_at(int(self.updates))
        self.updates += 1
        for online, target in ((self.encoder, self.encoder_target), (self.projector, self.projector_target)):
            for po, pt in zip(online.parameters(), target.parameters(), strict=True):
                pt.mul_(m).add_(po.detach(), alpha=1 - m)

    def _online(self, x: torch.Tensor) -> torch.Tensor:
        """The propagated projection of the last map, normalised along channels."""
        return F.normalize(self.propagation(self.projector(self.encoder(x)[-1])), dim=1)

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector_target(self.encoder_target(x)[-1]), dim=1)

    def _check(self, views: tuple[torch.Tensor, ...], coords: tuple[torch.Tensor, ...]) -> None:
        a, b = views
        if a.dim() != 4 or a.shape != b.shape or a.shape[1] != self.in_chans:
            raise ValueError(f"PixPro expects two views of one shape (B, {self.in_chans}, H, W); got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        for c in coords:
            if tuple(c.shape) != (a.shape[0], 4):
                raise ValueError(f"PixPro expects crop coordinates of shape ({a.shape[0]}, 4); got {tuple(c.shape)}")

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, coords1: torch.Tensor,
                coords2: torch.Tensor) -> torch.Tensor:
        self._check((view1, view2), (coords1, coords2))
        pred1, pred2 = self._online(view1), self._online(view2)
        if self.training and torch.is_grad_enabled():
            self.update_target()
        key1, key2 = self._target(view1), self._target(view2)
        coords1, coords2 = coords1.to(pred1.dtype), coords2.to(pred1.dtype)
        return (pixpro_loss(pred1, key2, coords1, coords2, self.pos_ratio)
                + pixpro_loss(pred2, key1, coords2, coords1, self.pos_ratio))

    @torch.no_grad()
    def similarity(self, view1: torch.Tensor, view2: torch.Tensor, cell: tuple[int, int] | None = None
                   ) -> torch.Tensor:
        """(B, h, w): the cosine of view 2's momentum features at every cell with view 1's propagated feature at
        `cell` (its centre cell by default), for a figure of what the features match."""
        pred1 = self._online(view1)
        key2 = self._target(view2)
        h, w = pred1.shape[-2:]
        i, j = cell if cell is not None else (h // 2, w // 2)
        return (pred1[:, :, i, j, None, None] * key2).sum(1)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The online encoder's weights under `create_model(model_name, in_chans=...)`'s keys (no classifier)."""
        return {k.removeprefix("model."): v for k, v in self.encoder.state_dict().items()}
