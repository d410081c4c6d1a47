"""Dense prediction: losses and metrics for semantic segmentation, and whole-image or sliding-window inference.

- `SegmentationMetrics`: a (num_classes x num_classes) confusion matrix, rows = true class, columns = predicted,
  accumulated with `torch.bincount` over the pixels whose label is not `ignore_index`. From it: IoU per class
  (TP / (TP + FP + FN); NaN for a class absent from both labels and predictions), mIoU (the mean over the classes
  whose IoU is defined) and pixel accuracy (trace / total).
- `cross_entropy`: torch's pixel-wise cross-entropy with `ignore_index`; `DiceLoss`: 1 - the mean over classes of
  the soft Dice coefficient (2 sum p t + s) / (sum p + sum t + s) of the softmax against the one-hot labels,
  ignored pixels left out; `segmentation_loss` combines them with OCR's auxiliary logits.
- `predict_logits`: a model's logits for whole images, or averaged over overlapping windows (mmseg's 'slide').
- `psnr`, `ssim`: per-image super-resolution scores; SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
  K2 = 0.03 over the window positions inside the image, as in Wang et al., IEEE TIP 2004.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

#: Label of pixels that count for neither loss nor metric (mmseg's and Cityscapes' convention).
IGNORE_INDEX = 255


def _labels(target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Integer labels (B, H, W), checked: every value is a class index or `ignore_index`."""
    if target.is_floating_point() or target.is_complex() or target.ndim != 3:
        raise ValueError(f"target must be integer labels of shape (batch, height, width); got {target.dtype} "
                         f"of shape {tuple(target.shape)}")
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bad.any():
        raise ValueError(f"target holds label {int(target[bad][0])}, outside 0..{num_classes - 1} "
                         f"(and the ignore index {ignore_index})")
    return target.long()


def _check_logits(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 4 or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(f"logits must be (batch, classes, height, width) matching target {tuple(target.shape)}; "
                         f"got {tuple(logits.shape)}")


class SegmentationMetrics:
    """Confusion matrix over the pixels seen by `update`, and mIoU, per-class IoU and pixel accuracy from it."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive class count; got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: logits (B, K, H, W) (argmax over K) or predicted labels (B, H, W), and labels (B, H, W)."""
        k = self.num_classes
        target = _labels(target, k, self.ignore_index)
        pred = logits_or_pred
        if pred.ndim == 4:
            if pred.shape[1] != k:
                raise ValueError(f"logits have {pred.shape[1]} classes; the metric counts {k}")
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"predictions {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        pred = pred.long()
        if ((pred < 0) | (pred >= k)).any():
            raise ValueError(f"predicted labels must lie in 0..{k - 1}")
        valid = target != self.ignore_index
        pairs = target[valid] * k + pred[valid]
        self.confusion += torch.bincount(pairs.cpu(), minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, float | torch.Tensor]:
        """{"miou", "pixel_acc": floats, "iou_per_class": (K,) float64 with NaN for undefined classes,
        "confusion": (K, K) int64, rows true, columns predicted}."""
        conf = self.confusion.double()
        total = conf.sum()
        if total == 0:
            raise ValueError("no labelled pixels were counted: call update() with labels other than the ignore index")
        tp = conf.diagonal()
        union = conf.sum(0) + conf.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        return {"miou": float(iou.nanmean()), "pixel_acc": float(tp.sum() / total), "iou_per_class": iou,
                "confusion": self.confusion.clone()}


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean pixel-wise cross-entropy of logits (B, K, H, W) against labels (B, H, W), `ignore_index` left out."""
    _check_logits(logits, target)
    return F.cross_entropy(logits, _labels(target, logits.shape[1], ignore_index), ignore_index=ignore_index)


class DiceLoss(nn.Module):
    """1 - mean over classes of the soft Dice coefficient between softmax(logits) and one-hot labels, computed over
    all non-ignored pixels of the batch; `smooth` keeps classes absent from both at a coefficient of 1."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_logits(logits, target)
        k = logits.shape[1]
        target = _labels(target, k, self.ignore_index)
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.softmax(dim=1) * valid
        one_hot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), k).permute(0, 3, 1, 2) * valid
        dims = (0, 2, 3)
        inter = (probs * one_hot).sum(dims)
        denom = probs.sum(dims) + one_hot.sum(dims)
        return 1 - ((2 * inter + self.smooth) / (denom + self.smooth)).mean()


def segmentation_loss(outputs: dict[str, torch.Tensor | None], target: torch.Tensor, *, dice_weight: float = 0.0,
                      aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy (+ dice_weight x Dice) of a segmenter's `forward_train` output {"logits", "aux"}, plus
    aux_weight x the cross-entropy of the auxiliary logits when the head has them (OCRNet's 0.4)."""
    loss = cross_entropy(outputs["logits"], target, ignore_index)
    if dice_weight:
        loss = loss + dice_weight * DiceLoss(ignore_index)(outputs["logits"], target)
    if outputs.get("aux") is not None and aux_weight:
        loss = loss + aux_weight * cross_entropy(outputs["aux"], target, ignore_index)
    return loss


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts covering 0..size: every `stride`, the last window flush with the end."""
    last = max(size - window, 0)
    return sorted({*range(0, last, stride), last})


@torch.no_grad()
def predict_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, num_classes: int, *,
                   window: Sequence[int] | None = None, stride: Sequence[int] | None = None) -> torch.Tensor:
    """Logits (B, K, H, W) for `images` (B, C, H, W): the whole image at once (`window` None), or the average over
    windows of size `window` (h, w) placed every `stride` (default: the window, no overlap) with the last window
    flush with the border; an image smaller than the window is seen whole."""
    if window is None:
        return model(images)
    wh, ww = window
    sh, sw = stride if stride is not None else window
    if min(wh, ww, sh, sw) < 1:
        raise ValueError(f"window and stride must be positive; got window {tuple(window)} and stride ({sh}, {sw})")
    b, _, h, w = images.shape
    total = images.new_zeros(b, num_classes, h, w)
    seen = images.new_zeros(1, 1, h, w)
    for y in _starts(h, wh, sh):
        for x in _starts(w, ww, sw):
            total[..., y:y + wh, x:x + ww] += model(images[..., y:y + wh, x:x + ww])
            seen[..., y:y + wh, x:x + ww] += 1
    return total / seen


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"images must be (batch, channels, height, width) of one shape; got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR (B,) in dB: 10 log10(data_range^2 / MSE), the MSE over each image's channels and pixels."""
    _check_pair(pred, target)
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 2-D Gaussian window (size, size), float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (B,): the mean over channels and over every window position inside the image of
    ((2 mu_x mu_y + C1)(2 cov_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2)), Gaussian-weighted
    local moments, C1 = (0.01 L)^2, C2 = (0.03 L)^2 (Wang et al. 2004)."""
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} pixels; got {tuple(pred.shape[-2:])}")
    c = pred.shape[1]
    w = gaussian_window(window, sigma).to(pred.device).expand(c, 1, window, window)
    x, y = pred.double(), target.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)
