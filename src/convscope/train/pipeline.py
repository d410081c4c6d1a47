"""A run's input pipeline: the datasets, transforms and loaders a TrainConfig asks for, and the model input size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.datasets import IndexSubset, TensorImageDataset, cache_fits
from ..data.loaders import Loader
from ..data.mixing import MixupCutMix
from ..data.open import DataFacts, OpenedData, SyntheticOptions, open_dataset, probe_data
from ..data.sizes import decide_input_size
from ..data.transforms import EvalTransform, RandAugmentLite, TrainTransform
from ..models import ModelTraits, model_card
from .config import TrainConfig
from .distributed import DistInfo
from .report import Console


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


def model_size_facts(name: str, traits: ModelTraits) -> dict[str, Any]:
    """The variant's facts `decide_input_size` reads: its traits (from the registry, nothing built) and its card's
    input side."""
    return dict(name=model_card(name).name, min_side=max(traits.min_input_size), fixed=traits.fixed_input_size,
                multiple=traits.input_multiple, card_side=max(model_card(name).input_size[1:]),
                last_stride=traits.reductions[-1] if traits.reductions else 0)


def _normalisation(cfg: TrainConfig, facts: DataFacts, opened: OpenedData, in_chans: int) -> tuple[tuple, tuple]:
    """Mean and std: measured on in-memory training images (before any limit), the card's for a folder."""
    if facts.in_memory:
        ds = opened.dataset
        if facts.gray and in_chans > 1:   # repeated grayscale: measure one channel, repeat its figures
            ds = TensorImageDataset(ds.images[:, :1], ds.labels, ds.classes, ds.name)
        mean, std = ds.channel_stats()
        return (mean * in_chans, std * in_chans) if len(mean) != in_chans else (mean, std)
    pre = model_card(cfg.model).pretrained_cfg
    if in_chans == 3:
        return tuple(pre.mean), tuple(pre.std)
    return (round(sum(pre.mean) / 3, 4),), (round(sum(pre.std) / 3, 4),)


def build_data(cfg: TrainConfig, traits: ModelTraits, console: Console | None = None) -> DataSpec:
    """Datasets for `cfg.data` (any spec `open_dataset` takes) with the input size chosen for the model and data
    (`decide_input_size`), the load size, crop and normalisation."""
    card_facts = model_size_facts(cfg.model, traits)
    synth = SyntheticOptions(cfg.synthetic_size, cfg.synthetic_classes, cfg.synthetic_image_size)
    facts = probe_data(cfg.data, synth)
    native = facts.native_size
    input_size, size_note = decide_input_size(native, cfg.input_size, from_files=not facts.in_memory, **card_facts)
    if facts.in_memory:
        crop_pct, load = cfg.crop_pct or 1.0, native
    else:
        small = max(native) < card_facts["card_side"]
        crop_pct = cfg.crop_pct or (1.0 if small else model_card(cfg.model).pretrained_cfg.crop_pct)
        side = max(1, round(max(input_size) / crop_pct))
        load = (side, side)
    in_chans = cfg.in_chans or (1 if facts.gray else 3)
    # a folder whose decoded images (training and held-out) fit in memory is decoded once, not once per epoch
    cache = not facts.in_memory and cache_fits(facts.n_images, in_chans, load[0])
    opened = open_dataset(cfg.data, "train", in_chans=in_chans, load_size=load[0], held_out=cfg.val_fraction,
                          seed=cfg.seed, on_error=cfg.on_error, check=cfg.check_images, cache=cache,
                          report=console.warn if console is not None else None, synthetic_options=synth,
                          facts=facts)
    mean, std = _normalisation(cfg, facts, opened, in_chans)
    train, test = opened.dataset, opened.held_out
    if cfg.data_limit is not None:
        train = train.subset(cfg.data_limit) if hasattr(train, "subset") else IndexSubset(train, range(cfg.data_limit))
    if cfg.eval_limit is not None:
        test = test.subset(cfg.eval_limit) if hasattr(test, "subset") else IndexSubset(test, range(cfg.eval_limit))
    return DataSpec(train, test, opened.classes, in_chans, input_size, tuple(load), crop_pct, tuple(mean),
                    tuple(std), opened.description, tuple(native), size_note)


SMALL_DATA = 20_000   # training images below which a data set counts as small
SMALL_IMAGE = 64      # native side at or below which images train whole (no random crops)


def resolve_defaults(cfg: TrainConfig, spec: DataSpec, world_size: int = 1) -> tuple[TrainConfig, str]:
    """The settings left to the data (None in `cfg`) chosen from the data, and a line saying what and why.

    - batch size: 128, or 64 for a small data set (fewer than 20,000 training images), for twice the steps; at
      most the images one process trains on (a 24-image folder trains in whole-set batches, not refused);
    - learning rate: 1e-3 x batch / 128, x4 for small data sets (short schedules need a higher peak);
    - warm-up: 1 epoch, or 0.5 for small data sets;
    - crops: whole images (scale 1,1, only flips) for images of 64 pixels or less, whose few pixels a crop
      would cut into; else Inception crops, milder (0.35-1 of the area) for small data sets;
    - the input size is chosen with the data (`build_data`, `decide_input_size`) and only reported here.
    """
    import dataclasses

    n = len(spec.train)
    side = max(spec.native_size) if max(spec.native_size) else max(spec.input_size)
    small_data, small_image = n < SMALL_DATA, side <= SMALL_IMAGE
    chosen, why = {}, []
    if cfg.batch_size is None:
        default, per_process = (64 if small_data else 128), -(-n // world_size)
        chosen["batch_size"] = min(default, per_process)
        if per_process < default:
            why.append(f"fewer than the default batch of {default} per process")
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
        why.insert(0, f"{n:,} training images ({'small: < ' + format(SMALL_DATA, ',') if small_data else 'not small'})")
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
