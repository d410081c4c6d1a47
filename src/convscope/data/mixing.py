"""Mixup, CutMix and label smoothing: soft targets and the loss that reads them.

Mixup (Zhang et al., arXiv 1710.09412) blends each image with its partner, the batch reversed, and the labels
with the same weight. CutMix (Yun et al., arXiv 1905.04899) pastes a box of the partner instead; its label weight
is the pasted area exactly, after the box is clipped to the image. Label smoothing (Szegedy et al., arXiv
1512.00567) gives the true class 1 - eps + eps/C and every class eps/C.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) class indices -> (B, C) targets: 1 - smoothing + smoothing / C on the true class, smoothing / C
    elsewhere."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"label smoothing must be in [0, 1); got {smoothing}")
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1), 1 - smoothing + off)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c targets_c log softmax(logits)_c."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for class indices (with label smoothing) or for soft targets (already smoothed)."""
    if targets.ndim == logits.ndim:
        return soft_target_cross_entropy(logits, targets)
    return F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)


def mixup(x: torch.Tensor, targets: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """lam * sample + (1 - lam) * partner, for images and soft targets; the partner of i is B-1-i."""
    return x * lam + x.flip(0) * (1 - lam), targets * lam + targets.flip(0) * (1 - lam)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box (y0, y1, x0, x1) covering about 1 - lam of the image, centred uniformly, clipped to the image."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = int(np.clip(cy - ch // 2, 0, height)), int(np.clip(cy + ch // 2, 0, height))
    x0, x1 = int(np.clip(cx - cw // 2, 0, width)), int(np.clip(cx + cw // 2, 0, width))
    return y0, y1, x0, x1


def cutmix(x: torch.Tensor, targets: torch.Tensor, lam: float,
           rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste the partner's box into each image; the label weight of the partner is the pasted area fraction.

    Returns (images, targets, lam_exact) with lam_exact = 1 - box area / image area after clipping."""
    h, w = x.shape[-2:]
    y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
    lam_exact = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return out, targets * lam_exact + targets.flip(0) * (1 - lam_exact), lam_exact


class MixupCutMix:
    """Per batch, with probability `prob`: CutMix (probability `switch_prob` when both are on) or Mixup, lam drawn
    from Beta(alpha, alpha). Labels become smoothed one-hot targets, then mixed.

    Called with the batch's own numpy Generator so that a batch is reproducible from its seed alone.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alpha must be >= 0; got {mixup_alpha}, {cutmix_alpha}")
        if not (0 <= prob <= 1 and 0 <= switch_prob <= 1):
            raise ValueError(f"prob and switch_prob must be in [0, 1]; got {prob}, {switch_prob}")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing = label_smoothing

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] % 2:
            raise ValueError(f"Mixup/CutMix pair image i with image B-1-i and need an even batch; got {x.shape[0]}")
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if rng.random() >= self.prob:
            return x, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if use_cutmix:
            x, targets, _ = cutmix(x, targets, lam, rng)
            return x, targets
        return mixup(x, targets, lam)
