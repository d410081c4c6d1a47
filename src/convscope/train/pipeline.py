"""A run's input pipeline: the datasets, transforms and loaders a TrainConfig asks for, and the model input size."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..extras import require
from ..models import model_card
from .config import TrainConfig
from .datasets import (
    FASHION_MNIST_CLASSES,
    ImageFolder,
    IndexSubset,
    cache_fits,
    fashion_mnist,
    is_idx_dir,
    probe_images,
    repeat_channels,
    split_indices,
    synthetic,
)
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
    native_size: tuple[int, int] = (0, 0)   # the images' own size (median over a sample of a folder's files)
    size_note: str = ""   # why the input size differs from the native size, for the data-aware defaults line


def choose_input_size(model: nn.Module, native: Sequence[int], requested: int | None) -> tuple[int, int]:
    """The model input: `requested`, or the data's native size raised to the model's minimum; a model with a
    fixed input size takes only that."""
    fixed = model.traits.fixed_input_size
    name = model.model_name
    if fixed is not None:
        if requested is not None and (requested, requested) != tuple(fixed):
            raise ValueError(f"{name} only takes {fixed[0]}x{fixed[1]} inputs; got --input-size {requested}")
        return tuple(fixed)
    mh, mw = model.traits.min_input_size
    if requested is not None:
        if requested < mh or requested < mw:
            raise ValueError(f"{name} needs inputs of at least {mh}x{mw}; got --input-size {requested}")
        return requested, requested
    return max(int(native[0]), mh), max(int(native[1]), mw)


def useful_input_size(model: nn.Module) -> int:
    """The smallest input side at which the model's last feature map is still 2x2: twice the reduction (total
    stride) of its last stage, e.g. 64 for a stride-32 ConvNeXt; 0 for a model that declares no stages.

    Below it the last stage sees a single position (ConvNeXt at 32x32 ends at 1x1), so its 7x7 depthwise kernels
    see only their centre tap and that stage's spatial mixing is lost; at 2x2 they still mix neighbours."""
    info = getattr(model, "feature_info", None) or []
    reductions = [int(f["reduction"]) for f in info if isinstance(f, dict) and f.get("reduction")]
    return 2 * reductions[-1] if reductions else 0


def folder_input_size(model: nn.Module, native: Sequence[int], card_side: int) -> tuple[int, str]:
    """The input side an image folder trains at when --input-size is not given, and why (for the printed line).

    Images at least as large as the model card's input train at the card's size. Smaller ones train at their
    native side raised to the larger of the model's minimum input and its useful size (`useful_input_size`),
    never above the card's size."""
    side = max(int(native[0]), int(native[1]))
    name = model.model_name
    if side >= card_side:
        return card_side, ""
    minimum = max(model.traits.min_input_size)
    useful = useful_input_size(model)
    chosen = min(card_side, max(side, minimum, useful))
    if chosen == side:
        return side, ""
    if chosen == useful and useful > minimum:
        return chosen, (f"the data's {native[0]}x{native[1]} raised to {chosen}: the smallest size at which "
                        f"{name}'s last stage (stride {useful // 2}) still sees 2x2")
    if chosen == minimum:
        return chosen, f"the data's {native[0]}x{native[1]} raised to the model's minimum"
    return chosen, f"the data's {native[0]}x{native[1]} raised to {chosen}, the model card's size"


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
        size_note = ""
        desc = f"Fashion-MNIST ({root or 'default location'})"
    elif cfg.data == "synthetic":
        s = cfg.synthetic_image_size
        kw = dict(num_classes=cfg.synthetic_classes, size=s, in_chans=cfg.in_chans or 3, seed=cfg.seed)
        train = synthetic(cfg.synthetic_size, split="train", **kw)
        test = synthetic(max(cfg.synthetic_size // 4, 2), split="test", **kw)
        mean, std = train.channel_stats()
        classes, crop_pct, native, in_chans = train.classes, cfg.crop_pct or 1.0, (s, s), train.in_chans
        input_size, size_note = None, ""
        desc = f"synthetic ({cfg.synthetic_size} images, {cfg.synthetic_classes} classes)"
    else:
        if not path.is_dir():
            raise FileNotFoundError(f"--data {cfg.data!r} is neither 'fashion-mnist', 'synthetic' nor a directory")
        require("PIL", "reading an image folder")
        warn = console.warn if console is not None else None
        held_out = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
        train_root = path / "train" if (path / "train").is_dir() else path
        # The data's own size and channels, from the file headers, before anything is decoded
        probe_set = ImageFolder(train_root, 1, check="none", report=warn)
        nh, nw, gray = probe_images([p for p, _ in probe_set.samples])
        in_chans = cfg.in_chans or (1 if gray else 3)
        card_side = max(card.input_size[1:])
        small = max(nh, nw) < card_side
        crop_pct = cfg.crop_pct or (1.0 if small else card.pretrained_cfg.crop_pct)
        side, size_note = folder_input_size(probe, (nh, nw), card_side)
        if cfg.input_size is not None:
            size_note = ""
        input_size = choose_input_size(probe, (side, side), cfg.input_size)
        if size_note and tuple(input_size) != (side, side):   # a model that takes one size only
            size_note = "the only size the model takes"
        load = max(1, round(max(input_size) / crop_pct))
        # a folder whose decoded images (training and held-out) fit in memory is decoded once, not once per epoch
        n_images = len(probe_set)
        if held_out is not None and train_root != path:
            n_images += len(ImageFolder(held_out, 1, check="none", classes=probe_set.classes, report=lambda m: None))
        cache = cache_fits(n_images, in_chans, load)
        kw = dict(load_size=load, mode="RGB" if in_chans == 3 else "L", on_error=cfg.on_error,
                  check=cfg.check_images, report=warn, cache=cache)
        if train_root != path:
            train = ImageFolder(train_root, **kw)
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
        classes = train.classes
        native = (nh, nw)
        desc = f"image folder {path} ({len(train)} train / {len(test)} eval images, {nh}x{nw} " \
               f"{'grayscale' if gray else 'colour'}{', decoded once and held in memory' if cache else ''})"
    if cfg.data_limit is not None:
        train = train.subset(cfg.data_limit) if hasattr(train, "subset") else IndexSubset(train, range(cfg.data_limit))
    if cfg.eval_limit is not None:
        test = test.subset(cfg.eval_limit) if hasattr(test, "subset") else IndexSubset(test, range(cfg.eval_limit))
    if input_size is None:
        input_size = choose_input_size(probe, native, cfg.input_size)
        load = native
        if cfg.input_size is None and tuple(input_size) != tuple(native):
            size_note = f"the data's {native[0]}x{native[1]} raised to the model's minimum"
    return DataSpec(train, test, tuple(classes), in_chans, input_size, (load, load) if isinstance(load, int)
                    else tuple(load), crop_pct, tuple(mean), tuple(std), desc, tuple(native), size_note)


SMALL_DATA = 20_000   # training images below which a data set counts as small
SMALL_IMAGE = 64      # native side at or below which images train whole (no random crops)


def resolve_defaults(cfg: TrainConfig, spec: DataSpec) -> tuple[TrainConfig, str]:
    """The settings left to the data (None in `cfg`) chosen from the data, and a line saying what and why.

    - batch size: 128, or 64 for a small data set (fewer than 20,000 training images), for twice the steps;
    - learning rate: 1e-3 x batch / 128, x4 for small data sets (short schedules need a higher peak);
    - warm-up: 1 epoch, or 0.5 for small data sets;
    - crops: whole images (scale 1,1, only flips) for images of 64 pixels or less, whose few pixels a crop
      would cut into; else Inception crops, milder (0.35-1 of the area) for small data sets;
    - the input size is chosen with the data (`build_data`, `folder_input_size`) and only reported here.
    """
    import dataclasses

    n = len(spec.train)
    side = max(spec.native_size) if max(spec.native_size) else max(spec.input_size)
    small_data, small_image = n < SMALL_DATA, side <= SMALL_IMAGE
    chosen, why = {}, []
    if cfg.batch_size is None:
        chosen["batch_size"] = 64 if small_data else 128
    batch = chosen.get("batch_size", cfg.batch_size)
    if cfg.lr is None:
        chosen["lr"] = round(1e-3 * batch / 128 * (4 if small_data else 1), 6)
    if cfg.warmup_epochs is None:
        chosen["warmup_epochs"] = 0.5 if small_data else 1.0
    if cfg.scale is None:
        chosen["scale"] = (1.0, 1.0) if small_image else ((0.35, 1.0) if small_data else (0.08, 1.0))
    if cfg.ratio is None:
        chosen["ratio"] = (1.0, 1.0) if chosen.get("scale", cfg.scale) == (1.0, 1.0) else (3 / 4, 4 / 3)
    resolved = dataclasses.replace(cfg, **chosen)
    if resolved.min_lr > resolved.lr:
        raise ValueError(f"--min-lr {resolved.min_lr:g} is above the peak learning rate {resolved.lr:g}")
    if not chosen and not spec.size_note:
        return resolved, ""
    if chosen:   # the settings above follow the data's size; the input size only the images' size
        why.append(f"{n:,} training images ({'small: < ' + format(SMALL_DATA, ',') if small_data else 'not small'})")
    why.append(f"{spec.native_size[0]}x{spec.native_size[1]} images" if max(spec.native_size) else "")
    shown = []
    flags = []
    for k, v in chosen.items():
        v = ",".join(f"{x:g}" for x in v) if isinstance(v, tuple) else f"{v:g}"
        flags.append(f"--{k.replace('_', '-')} {v}")
    if flags:
        shown.append(" ".join(flags))
    if spec.size_note:
        shown.append(f"input {spec.input_size[0]}x{spec.input_size[1]} ({spec.size_note})")
    return resolved, (f"data-aware defaults: {'; '.join(shown)}; because: "
                      + ", ".join(w for w in why if w) + " (pass a flag to override)")


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
