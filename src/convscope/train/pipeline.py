"""A run's input pipeline: the datasets, transforms and loaders a TrainConfig asks for, and the model input size."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..models import model_card
from .config import TrainConfig
from .datasets import (FASHION_MNIST_CLASSES, ImageFolder, IndexSubset, fashion_mnist, is_idx_dir, repeat_channels,
                       split_indices, synthetic)
from .distributed import DistInfo
from .loaders import Loader
from .mixing import MixupCutMix
from .report import Console
from .transforms import EvalTransform, RandAugmentLite, TrainTransform


@dataclass
class DataSpec:
    """The datasets of a run and how to feed them to the model."""

    train: Any
    eval: Any
    classes: tuple[str, ...]
    in_chans: int
    input_size: tuple[int, int]
    load_size: tuple[int, int]
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


def choose_input_size(model: nn.Module, native: Sequence[int], requested: int | None) -> tuple[int, int]:
    """The model input: `requested`, or the data's native size raised to the model's minimum; a model with a
    fixed input size takes only that."""
    fixed = getattr(model, "fixed_input_size", None)
    name = getattr(model, "model_name", type(model).__name__)
    if fixed is not None:
        if requested is not None and (requested, requested) != tuple(fixed):
            raise ValueError(f"{name} only takes {fixed[0]}x{fixed[1]} inputs; got --input-size {requested}")
        return tuple(fixed)
    mh, mw = getattr(model, "min_input_size", (1, 1))
    if requested is not None:
        if requested < mh or requested < mw:
            raise ValueError(f"{name} needs inputs of at least {mh}x{mw}; got --input-size {requested}")
        return requested, requested
    return max(int(native[0]), mh), max(int(native[1]), mw)


def build_data(cfg: TrainConfig, probe: nn.Module, console: Console | None = None) -> DataSpec:
    """Datasets for `cfg.data`: 'fashion-mnist', 'synthetic', a directory of Fashion-MNIST idx files, or an image
    folder (root/<class>/..., or root/train + root/val|test)."""
    card = model_card(cfg.model)
    path = Path(cfg.data)
    if cfg.data == "fashion-mnist" or (path.is_dir() and is_idx_dir(path)):
        root = None if cfg.data == "fashion-mnist" else path
        train, test = fashion_mnist(root, "train"), fashion_mnist(root, "test")
        mean, std = train.channel_stats()
        in_chans = cfg.in_chans or 1
        train, test = repeat_channels(train, in_chans), repeat_channels(test, in_chans)
        mean, std = mean * in_chans, std * in_chans
        classes, crop_pct, native, input_size = FASHION_MNIST_CLASSES, cfg.crop_pct or 1.0, train.image_size, None
        desc = f"Fashion-MNIST ({root or 'default location'})"
    elif cfg.data == "synthetic":
        s = cfg.synthetic_image_size
        kw = dict(num_classes=cfg.synthetic_classes, size=s, in_chans=cfg.in_chans or 3, seed=cfg.seed)
        train = synthetic(cfg.synthetic_size, split="train", **kw)
        test = synthetic(max(cfg.synthetic_size // 4, 2), split="test", **kw)
        mean, std = train.channel_stats()
        classes, crop_pct, native, in_chans = train.classes, cfg.crop_pct or 1.0, (s, s), train.in_chans
        input_size = None
        desc = f"synthetic ({cfg.synthetic_size} images, {cfg.synthetic_classes} classes)"
    else:
        if not path.is_dir():
            raise FileNotFoundError(f"--data {cfg.data!r} is neither 'fashion-mnist', 'synthetic' nor a directory")
        in_chans = cfg.in_chans or 3
        crop_pct = cfg.crop_pct or card.pretrained_cfg.crop_pct
        input_size = choose_input_size(probe, card.input_size[1:], cfg.input_size)
        load = max(1, round(max(input_size) / crop_pct))
        warn = console.warn if console is not None else None
        kw = dict(load_size=load, mode="RGB" if in_chans == 3 else "L", on_error=cfg.on_error,
                  check=cfg.check_images, report=warn)
        held_out = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
        if (path / "train").is_dir():
            train = ImageFolder(path / "train", **kw)
            if held_out is not None:
                test = ImageFolder(held_out, classes=train.classes, **kw)
            else:
                tr, va = split_indices(len(train), cfg.val_fraction, cfg.seed)
                train, test = IndexSubset(train, tr), IndexSubset(train, va)
        else:
            full = ImageFolder(path, **kw)
            tr, va = split_indices(len(full), cfg.val_fraction, cfg.seed)
            train, test = IndexSubset(full, tr), IndexSubset(full, va)
        mean = card.pretrained_cfg.mean if in_chans == 3 else (round(sum(card.pretrained_cfg.mean) / 3, 4),)
        std = card.pretrained_cfg.std if in_chans == 3 else (round(sum(card.pretrained_cfg.std) / 3, 4),)
        classes, native = train.classes, (load, load)
        desc = f"image folder {path} ({len(train)} train / {len(test)} eval images)"
    if cfg.data_limit is not None:
        train = train.subset(cfg.data_limit) if hasattr(train, "subset") else IndexSubset(train, range(cfg.data_limit))
    if cfg.eval_limit is not None:
        test = test.subset(cfg.eval_limit) if hasattr(test, "subset") else IndexSubset(test, range(cfg.eval_limit))
    if input_size is None:
        input_size = choose_input_size(probe, native, cfg.input_size)
    return DataSpec(train, test, tuple(classes), in_chans, input_size, tuple(native), crop_pct, tuple(mean),
                    tuple(std), desc)


def make_loaders(cfg: TrainConfig, spec: DataSpec, dist: DistInfo) -> tuple[Loader, Loader]:
    randaug = RandAugmentLite(cfg.randaug_ops, cfg.randaug_magnitude) if cfg.randaug_ops else None
    train_tf = TrainTransform(spec.input_size, spec.mean, spec.std, cfg.scale, cfg.ratio, cfg.hflip, randaug)
    eval_tf = EvalTransform(spec.input_size, spec.mean, spec.std, spec.crop_pct)
    mixer = MixupCutMix(len(spec.classes), cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.mix_switch_prob,
                        cfg.label_smoothing)
    pin = dist.device.type == "cuda"
    common = dict(seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, workers=cfg.workers, pin_memory=pin,
                  prefetch_factor=cfg.prefetch)
    train = Loader(spec.train, train_tf, cfg.batch_size, train=True, mixer=mixer if mixer.active else None, **common)
    evaluation = Loader(spec.eval, eval_tf, cfg.eval_batch_size or 2 * cfg.batch_size, train=False, **common)
    return train, evaluation
