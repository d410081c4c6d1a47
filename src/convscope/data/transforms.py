"""Image transforms on tensor batches, written in PyTorch (no torchvision).

Everything works on whole batches `(B, C, H, W)` so that one call does the work of B per-image calls, and all
randomness comes from a `torch.Generator` passed in: the engine derives one per batch from (seed, epoch, step,
rank), so a batch is a pure function of its position in the run, whichever process or worker builds it.

Train-time geometry (random resized crop, horizontal flip, and RandAugment's rotate/shear/translate) is folded
into one affine matrix per image and applied by a single `grid_sample`; the colour operations follow.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1] (float input is returned as float32)."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize(x: torch.Tensor, size: int | Sequence[int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of a (C, H, W) image or (B, C, H, W) batch to `size` (h, w); antialiased when shrinking.

    uint8 input gives uint8 output (rounded), float gives float."""
    size = _pair(size)
    if tuple(x.shape[-2:]) == size:
        return x
    batched = x.ndim == 4
    y = to_float(x if batched else x.unsqueeze(0))
    y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    if x.dtype == torch.uint8:
        y = y.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return y if batched else y.squeeze(0)


def resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so that the shorter side is `size`, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    return resize(x, (max(1, round(h * scale)), max(1, round(w * scale))))


def center_crop(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """The central (h, w) window; the image must be at least that large."""
    h, w = _pair(size)
    H, W = x.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"center_crop: cannot take {h}x{w} from a {H}x{W} image")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, for float images in [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    if mean_t.shape[0] != x.shape[-3] or std_t.shape[0] != x.shape[-3]:
        raise ValueError(f"normalize: {x.shape[-3]} channels but mean/std have {mean_t.shape[0]}/{std_t.shape[0]}")
    return (x - mean_t) / std_t


# -- random resized crop + affine warp ---------------------------------------------------------------------------
def random_resized_crop_boxes(n: int, height: int, width: int, scale: Sequence[float] = (0.08, 1.0),
                              ratio: Sequence[float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                              attempts: int = 10) -> torch.Tensor:
    """Crop boxes (x0, y0, w, h) in pixels, one per image, as Inception's random resized crop draws them.

    Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`; of `attempts` draws the first that fits
    is taken, and if none fits, the central crop with the aspect ratio clamped to `ratio` (the usual fallback).
    """
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1; got {tuple(scale)}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must satisfy 0 < min <= max; got {tuple(ratio)}")
    area = height * width
    u = torch.rand(n, attempts, 4, generator=generator)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    aspect = log_r.exp()
    w = (target * aspect).sqrt().round()
    h = (target / aspect).sqrt().round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    # fallback: the whole image cropped to the nearest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    idx = first.clamp_min(0)
    rows = torch.arange(n)
    bw = torch.where(first >= 0, w[rows, idx], torch.tensor(float(fw)))
    bh = torch.where(first >= 0, h[rows, idx], torch.tensor(float(fh)))
    x0 = torch.where(first >= 0, (u[rows, idx, 2] * (width - bw + 1)).floor(), ((width - bw) / 2).floor())
    y0 = torch.where(first >= 0, (u[rows, idx, 3] * (height - bh + 1)).floor(), ((height - bh) / 2).floor())
    return torch.stack([x0, y0, bw, bh], 1)


def crop_affine(boxes: torch.Tensor, height: int, width: int, out_size: Sequence[int],
                flip: torch.Tensor | None = None, matrix: torch.Tensor | None = None,
                translate: torch.Tensor | None = None) -> torch.Tensor:
    """`theta` for `F.affine_grid` (align_corners=False) that maps the output image onto each crop box.

    Per image, an output pixel at offset u from the output centre (in output pixels) samples the input at
    `box_centre + S (M (F u) + t)`, with F the optional horizontal flip, M an optional 2x2 matrix (rotation,
    shear) and t an optional translation (output pixels), S = box size / output size.
    """
    n = boxes.shape[0]
    oh, ow = _pair(out_size)
    x0, y0, bw, bh = boxes.unbind(1)
    f = torch.ones(n) if flip is None else torch.where(flip, -1.0, 1.0)
    a = torch.diag_embed(torch.stack([f * ow / 2, torch.full((n,), oh / 2)], 1))   # D_out F
    if matrix is not None:
        a = matrix @ a
    s = torch.diag_embed(torch.stack([bw / ow, bh / oh], 1))
    d_in = torch.diag(torch.tensor([2 / width, 2 / height]))
    lin = d_in @ s @ a
    centre = torch.stack([x0 + bw / 2, y0 + bh / 2], 1)
    if translate is not None:
        centre = centre + (s @ translate.unsqueeze(-1)).squeeze(-1)
    offset = centre * torch.tensor([2 / width, 2 / height]) - 1
    return torch.cat([lin, offset.unsqueeze(-1)], 2)


def warp(x: torch.Tensor, theta: torch.Tensor, out_size: Sequence[int], fill_zero: bool = True) -> torch.Tensor:
    """Bilinear sampling of each image through its affine `theta` (B, 2, 3). Outside the image is 0 when
    `fill_zero`, else the edge pixels continue (what a crop inside the image needs at its half-pixel border)."""
    oh, ow = _pair(out_size)
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="zeros" if fill_zero else "border",
                         align_corners=False)


# -- RandAugment (lite) -----------------------------------------------------------------------------------------
def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (other + factor.view(-1, 1, 1, 1) * (x - other)).clamp_(0, 1)


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
    smooth = F.conv2d(x, k.expand(c, 1, 3, 3), padding=1, groups=c)
    smooth[..., 0, :], smooth[..., -1, :] = x[..., 0, :], x[..., -1, :]   # PIL leaves the border pixels alone
    smooth[..., :, 0], smooth[..., :, -1] = x[..., :, 0], x[..., :, -1]
    return _blend(x, smooth, factor)


def _posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    step = 2 ** (8 - bits)
    return (x * 255).round_().div_(step).floor_().mul_(step / 255)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1 / (hi - lo).clamp_min(1e-12), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x).clamp_(0, 1)


class RandAugmentLite:
    """RandAugment (Cubuk et al., arXiv 1909.13719) on batches: each image gets `num_ops` operations drawn
    uniformly (with replacement) at one global `magnitude` on torchvision's 0-30 scale; signed operations
    get a random sign.

    "Lite": Equalize is left out. Magnitudes at 30: shear 0.3, translate 0.45 of the image, rotate 30 degrees,
    brightness/color/contrast/sharpness factor 1 +- 0.9, posterize to 4 bits, solarize threshold 0. The
    geometric operations are returned as an affine part (`geometry`) for the caller to fold into its warp; the
    colour operations are applied by `color` after the warp.
    """

    GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
    COLOR = ("brightness", "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast")
    OPS = ("identity",) + GEOMETRIC + COLOR

    def __init__(self, num_ops: int = 2, magnitude: float = 9, num_bins: int = 31) -> None:
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0; got {num_ops}")
        if not 0 <= magnitude <= num_bins - 1:
            raise ValueError(f"magnitude must be in [0, {num_bins - 1}]; got {magnitude}")
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.level = magnitude / (num_bins - 1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: op indices (n, num_ops) into OPS and signs (n, num_ops) of +-1."""
        ops = torch.randint(len(self.OPS), (n, self.num_ops), generator=generator)
        signs = torch.randint(2, (n, self.num_ops), generator=generator).float().mul_(2).sub_(1)
        return ops, signs

    def geometry(self, ops: torch.Tensor, signs: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
        """The composed 2x2 matrix (n, 2, 2) and translation (n, 2) in output pixels of the geometric ops."""
        n = ops.shape[0]
        oh, ow = _pair(size)
        m = torch.eye(2).repeat(n, 1, 1)
        t = torch.zeros(n, 2)
        for r in range(ops.shape[1]):
            op, sgn = ops[:, r], signs[:, r]
            step = torch.eye(2).repeat(n, 1, 1)
            shear = 0.3 * self.level * sgn
            step[:, 0, 1] = torch.where(op == self.OPS.index("shear_x"), shear, 0.0)
            step[:, 1, 0] = torch.where(op == self.OPS.index("shear_y"), shear, 0.0)
            angle = torch.where(op == self.OPS.index("rotate"), math.radians(30 * self.level) * sgn, 0.0)
            rot = torch.stack([angle.cos(), -angle.sin(), angle.sin(), angle.cos()], 1).view(n, 2, 2)
            m = m @ step @ rot
            t[:, 0] += torch.where(op == self.OPS.index("translate_x"), 0.45 * self.level * ow * sgn, 0.0)
            t[:, 1] += torch.where(op == self.OPS.index("translate_y"), 0.45 * self.level * oh * sgn, 0.0)
        return m, t

    def color(self, x: torch.Tensor, ops: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """Apply the colour ops to float images in [0, 1], in the order drawn."""
        factor_step = 0.9 * self.level
        bits = 8 - int(round(self.level * 4))
        threshold = 1.0 - self.level
        for r in range(ops.shape[1]):
            for name in self.COLOR:
                sel = ops[:, r] == self.OPS.index(name)
                if not bool(sel.any()):
                    continue
                xs = x[sel]
                factor = (1 + factor_step * signs[sel, r]).to(x.device, x.dtype)
                if name == "brightness":
                    xs = _blend(xs, torch.zeros_like(xs), factor)
                elif name == "color":
                    xs = _blend(xs, _gray(xs).expand_as(xs), factor)
                elif name == "contrast":
                    xs = _blend(xs, _gray(xs).mean((1, 2, 3), keepdim=True).expand_as(xs), factor)
                elif name == "sharpness":
                    xs = _sharpness(xs, factor)
                elif name == "posterize":
                    xs = _posterize(xs, bits)
                elif name == "solarize":
                    xs = torch.where(xs >= threshold, 1 - xs, xs)
                else:
                    xs = _autocontrast(xs)
                x[sel] = xs
        return x


# -- the pipelines -----------------------------------------------------------------------------------------------
class TrainTransform:
    """uint8 batch -> normalised float batch at `size`: random resized crop, horizontal flip and RandAugment-lite
    in one warp, then colour ops, then normalisation. `scale=(1, 1)` with the image's own aspect ratio in `ratio`
    and no flip/RandAugment is a plain resize."""

    def __init__(self, size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, randaugment: RandAugmentLite | None = None) -> None:
        if not 0 <= hflip <= 1:
            raise ValueError(f"hflip must be a probability in [0, 1]; got {hflip}")
        self.size = _pair(size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.hflip = hflip
        self.randaugment = randaugment

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        boxes = random_resized_crop_boxes(n, h, w, self.scale, self.ratio, generator)
        flip = torch.rand(n, generator=generator) < self.hflip
        matrix = translate = ops = None
        if self.randaugment is not None and self.randaugment.num_ops:
            ops, signs = self.randaugment.sample(n, generator)
            matrix, translate = self.randaugment.geometry(ops, signs, self.size)
        if matrix is None and bool((boxes == torch.tensor([0.0, 0.0, w, h])).all()):
            # every crop is the whole image: the same bilinear resampling without building a sampling grid
            y = resize(to_float(x), self.size)
            y = torch.where(flip.view(-1, 1, 1, 1).to(y.device), y.flip(-1), y)
        else:   # rotated / sheared / translated images are filled with 0 where they leave the frame
            theta = crop_affine(boxes, h, w, self.size, flip, matrix, translate)
            y = warp(to_float(x), theta, self.size, fill_zero=matrix is not None)
        if ops is not None:
            y = self.randaugment.color(y, ops, signs)
        return normalize(y, self.mean, self.std)


class EvalTransform:
    """uint8 batch -> normalised float batch: keep the central `crop_pct` of the image, resize it to `size`."""

    def __init__(self, size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 crop_pct: float = 1.0) -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1]; got {crop_pct}")
        self.size = _pair(size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_pct = crop_pct

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.crop_pct < 1:
            x = center_crop(x, (max(1, round(h * self.crop_pct)), max(1, round(w * self.crop_pct))))
        return normalize(resize(to_float(x), self.size), self.mean, self.std)
