"""Single-image super-resolution on the training loop: `SuperResolutionTask` (an SR model from
`convscope.heads.sr`, mean squared error) scored by `SuperResolutionEvaluator` (PSNR and SSIM, `train.dense`,
against bicubic upsampling of the same inputs), its data and the trained model's evaluation (`evaluate_sr`).

Data: the high-resolution images are an in-memory data set's (Fashion-MNIST by default, `--data` as for
classification), cropped at the bottom and right to a multiple of the scale r (28 -> 27 for r = 3); each
low-resolution copy is their bicubic downsampling by r (antialiased, rounded to uint8, as a stored image would
be), made once: the pairs are a pure function of the data. Intensities are fed in [0, 1] (no normalisation),
so the model's output is compared with the high-resolution image in [0, 1], and PSNR and SSIM use a data range
of 1, over the whole image (no border shaved).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data.loaders import Loader
from ..data.open import open_dataset
from ..heads.sr import SR_MODELS, SR_SCALES, create_sr_model
from ..models.source import read_meta, resolve_weights_file
from ..utils import resolve_device
from .callbacks import Evaluation
from .config import TrainConfig
from .dense import psnr, ssim
from .distributed import DistInfo, all_reduce_sum
from .parts import Normalize, PairArrays, RunParts, dense_defaults, load_task_weights, pair_loaders


def downsample_pairs(images: torch.Tensor, scale: int) -> PairArrays:
    """(low-resolution, high-resolution) uint8 pairs of `images` (N, C, H, W): the high-resolution images cropped
    to a multiple of `scale`, the low-resolution ones their antialiased bicubic downsampling by `scale`."""
    h, w = images.shape[-2] - images.shape[-2] % scale, images.shape[-1] - images.shape[-1] % scale
    if min(h, w) < scale:
        raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} are too small for x{scale}")
    hr = images[..., :h, :w].contiguous()
    lr = torch.cat([F.interpolate(chunk.float(), size=(h // scale, w // scale), mode="bicubic", antialias=True,
                                  align_corners=False) for chunk in hr.split(4096)])
    return PairArrays(lr.round().clamp(0, 255).byte(), hr, "sr pairs")


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic upsampling of `x` (B, C, h, w) in [0, 1] by `scale`, clamped to [0, 1]: the baseline."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class SuperResolutionEvaluator:
    """Mean PSNR and SSIM (per image, data range 1) of the outputs clamped to [0, 1], of bicubic upsampling of the
    same inputs, and the mean squared error, summed over ranks."""

    primary, higher_is_better = "psnr", True
    labels = {"psnr": "PSNR", "ssim": "SSIM"}
    fmt, axis = "{:.4f}", "PSNR (dB) and SSIM"
    KEYS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "loss")

    def __init__(self, scale: int, device: torch.device, dist: DistInfo | None = None) -> None:
        self.scale, self.device = scale, device
        self.dist = dist or DistInfo(device=device)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.KEYS), dtype=torch.float64, device=self.device)
        self.n = torch.zeros((), dtype=torch.int64, device=self.device)

    def update(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, target = batch
        pred, base = outputs.float().clamp(0, 1), bicubic(x, self.scale)
        mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
        for i, v in enumerate((psnr(pred, target), ssim(pred, target), psnr(base, target), ssim(base, target), mse)):
            self.sums[i] += v.sum()
        self.n += x.shape[0]

    def compute(self) -> dict[str, Any]:
        for t in (self.sums, self.n):
            all_reduce_sum(t, self.dist)
        n = max(int(self.n), 1)
        return dict({k: float(v) / n for k, v in zip(self.KEYS, self.sums.tolist(), strict=True)}, n=int(self.n),
                    scale=self.scale)

    def files(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        return {"sr.json": {k: scores[k] for k in (*self.KEYS, "n", "scale")}}


class SuperResolutionTask:
    """Low-resolution images (B, C, h, w) in [0, 1] and their high-resolution originals (B, C, rh, rw) as uint8;
    the mean squared error of the model's output against the originals in [0, 1]."""

    def __init__(self, model: nn.Module, scale: int, device: torch.device, *, dist: DistInfo | None = None,
                 amp: str = "fp32") -> None:
        self.model, self.train_module, self.device, self.amp = model, model, device, amp
        self.metrics = SuperResolutionEvaluator(scale, device, dist)

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, hr = batch
        return x.to(self.device, non_blocking=True), hr.to(self.device, non_blocking=True).float() / 255

    def batch_size(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[0].shape[0]

    def _forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            return module(x).float()

    def loss(self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._forward(module, batch[0])
        return F.mse_loss(out, batch[1]), out

    def predict(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self._forward(model, batch[0])


def _pairs(data: str, split: str, scale: int, in_chans: int | None, *, held_out: float | None = None,
           seed: int = 0) -> tuple[PairArrays, PairArrays | None, str]:
    """SR pairs of `split` of an in-memory data set (and of its held-out part with `held_out`), its description."""
    opened = open_dataset(data, split, in_chans=in_chans, held_out=held_out, seed=seed)
    if not hasattr(opened.dataset, "images"):
        raise ValueError(f"--task sr trains on in-memory images (fashion-mnist, an idx directory, synthetic); "
                         f"--data {data} is an image folder")
    held = None if opened.held_out is None else downsample_pairs(opened.held_out.images, scale)
    return downsample_pairs(opened.dataset.images, scale), held, opened.description


def build_sr_run(cfg: TrainConfig, dist: DistInfo) -> RunParts:
    """`convscope train --task sr`: the pairs, the SR model `cfg.model` for x`cfg.sr_scale`, the task and its
    loaders (batch 32 and lr 3e-3 unless given)."""
    if cfg.model not in SR_MODELS:
        raise ValueError(f"--task sr: --model must be one of {', '.join(SR_MODELS)}; got {cfg.model!r}")
    if cfg.model_kwargs:
        raise ValueError(f"--task sr: the SR models take no --model-kwargs; got {sorted(cfg.model_kwargs)}")
    r = cfg.sr_scale
    train, held, desc = _pairs(cfg.data, "train", r, cfg.in_chans, held_out=cfg.val_fraction, seed=cfg.seed)
    train = train if cfg.data_limit is None else train.subset(cfg.data_limit)
    held = held if cfg.eval_limit is None else held.subset(cfg.eval_limit)
    cfg, defaults_line = dense_defaults(cfg, len(train), 32, 3e-3)
    c, lr_size, hr_size = train.images.shape[1], list(train.images.shape[-2:]), list(train.targets.shape[-2:])
    torch.manual_seed(cfg.seed)
    model = create_sr_model(cfg.model, r, c).to(dist.device)
    task = SuperResolutionTask(model, r, dist.device, dist=dist, amp=cfg.amp)
    train_loader, eval_loader = pair_loaders(cfg, train, held, Normalize([0.0] * c, [1.0] * c), dist)
    meta = dict(task="sr", model=cfg.model, model_kwargs={}, scale=r, num_classes=1, in_chans=c, input_size=lr_size,
                load_size=hr_size, crop_pct=1.0, mean=[0.0] * c, std=[1.0] * c, class_names=["image"], data=cfg.data)
    shape = f"input {c}x{lr_size[0]}x{lr_size[1]} -> {hr_size[0]}x{hr_size[1]} (x{r})"
    return RunParts(cfg, task, train_loader, eval_loader, meta, title=f"{cfg.model} x{r} on {desc}", shape=shape,
                    description=f"{desc}, low resolution by bicubic downsampling", defaults_line=defaults_line)


def load_sr_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The SR model of a weights file written by `convscope train --task sr` (or its run directory), in eval mode
    on `device`, and its description (checked before anything is built; the file read as safetensors)."""
    path = resolve_weights_file(checkpoint)
    meta = read_meta(path, registered=False)
    if meta.get("task") != "sr" or meta.get("model") not in SR_MODELS or meta.get("scale") not in SR_SCALES:
        raise ValueError(f"{path}: not a super-resolution model (expected task 'sr', a model among "
                         f"{', '.join(SR_MODELS)} and a scale among {SR_SCALES})")
    model = create_sr_model(meta["model"], meta["scale"], meta["in_chans"])
    load_task_weights(model, path, f"{meta['model']} x{meta['scale']}")
    return model.to(device).eval(), meta


def evaluate_sr(checkpoint: str | os.PathLike, data: str = "fashion-mnist", split: str = "test",
                batch_size: int = 256, limit: int | None = None, device: str = "auto") -> dict[str, Any]:
    """PSNR and SSIM of a trained SR model on the bicubic-downsampled `split` of `data`, and bicubic's."""
    dev = resolve_device(device)
    model, meta = load_sr_model(checkpoint, dev)
    pairs, _, desc = _pairs(data, split, meta["scale"], meta["in_chans"])
    pairs = pairs if limit is None else pairs.subset(limit)
    task = SuperResolutionTask(model, meta["scale"], dev)
    loader = Loader(pairs, Normalize(meta["mean"], meta["std"]), batch_size, train=False)
    scores = Evaluation(task, loader, {}).evaluate(model)   # the training loop's own evaluation pass
    return dict(scores, checkpoint=str(checkpoint), model=meta["model"], data=desc)
