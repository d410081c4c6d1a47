"""Self-supervised pre-training on the training loop: rotation prediction (`RotationTask`, RotNet: Gidaris et
al., arXiv 1803.07728) and masked image modelling (`SparKTask`, SparK: Tian et al., arXiv 2301.03580, whose model
is `convscope.heads.spark.SparK`), each with its evaluator, built from a TrainConfig by `build_pretrain_run`
(`convscope pretrain`), and pixel-level contrast (`PixProTask`, PixPro: Xie et al., arXiv 2011.10043, whose model
is `convscope.heads.pixpro.PixPro`). All three run through the same Loop, callbacks, checkpoints, time budget and
metric files as `convscope train`; the figures and the encoder file the run leaves are in pretrain_outputs.py.

RotNet: the model is `create_model(name, num_classes=4, in_chans=C)`. Each batch of N uint8 images is flipped
(the random horizontal flip, drawn before rotating: a flip after a rotation by 90 degrees looks like a rotation
by 270), then rotated as a whole by 0, 90, 180 and 270 degrees (`torch.rot90`; 4N images, rotation-major, label
k for k x 90 degrees), and only then augmented and normalised image by image: one augmented view per rotation.
Rotating a non-square image would change its shape, so images are first centre-cropped to a square of their
shorter side (every source `open_dataset` reads is square already: Fashion-MNIST, synthetic data, and folders,
decoded to a square load size). Scored by rotation accuracy on the held-out images (each in its 4 rotations).

SparK: the loss is `spark(images, active)`, the mask `active` drawn by `spark.random_active` from a CPU generator
seeded per batch from the batch's own generator (seeded by (seed, epoch, step, rank), `data.loaders.batch_seed`),
never from the global RNG: a resumed run masks exactly as an uninterrupted one, and the held-out batches are
masked the same way at every evaluation. The input size is raised to a multiple of the encoder's total stride
(the deepest map's cells are what is masked). Scored by the held-out reconstruction loss (lower is better).

PixPro: each batch of N uint8 images becomes two views (`TwoViews`), each a random resized crop with a random
horizontal flip, brightness and contrast jitter, and (the second view only) solarisation, with each crop's corners
in the original image's normalised coordinates, which decide the positive pairs of cells. Gaussian blur, colour
jitter of saturation and hue and random greyscale of the official BYOL-style views are left out (the typical
images here are small, and often grey). The momentum branch moves once per training forward, over the run's
forward passes (epochs x micro-steps). Scored by the held-out PixPro loss (lower is better; -4 is perfect).

Data (`--ignore-labels`): without it the data is opened exactly as `convscope train` opens it (a folder needs its
class subfolders) and the labels are read but never used. With it, the labels are never read from a folder: the
folder's images (its train/ when it has one, val/ or test/ then held out) are one set whatever their layout, so a
flat folder of images works; an in-memory set (Fashion-MNIST, synthetic) is read as usual and its labels dropped.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.datasets import ImageFolder, IndexSubset, cache_fits, is_idx_dir, probe_images, split_indices
from ..data.sizes import decide_input_size
from ..data.transforms import (
    EvalTransform,
    TrainTransform,
    _blend,
    _gray,
    center_crop,
    crop_affine,
    normalize,
    random_resized_crop_boxes,
    to_float,
    warp,
)
from ..models import create_model, model_card, model_traits
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum
from .parts import RunParts, dense_defaults, pair_loaders
from .pipeline import SMALL_IMAGE, DataSpec, build_data, model_size_facts
from .report import Console
from .task import ClassificationMetrics, ClassificationTask

ROTATIONS = ("0", "90", "180", "270")   # the RotNet classes: degrees counter-clockwise
DEFAULTS = dict(rotnet=(64, 2e-3), spark=(64, 2e-3), pixpro=(64, 2e-3))   # (batch size, peak lr) unless given


# -- RotNet ------------------------------------------------------------------------------------------------------
def rotate_batch(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (4N, C, S, S): the batch centre-cropped to squares (S = min(H, W)) and rotated as a whole by
    0, 90, 180 and 270 degrees counter-clockwise, in that order."""
    s = min(x.shape[-2:])
    x = center_crop(x, s)
    return torch.cat([torch.rot90(x, k, (-2, -1)) for k in range(4)])


def rotation_labels(n: int, device: torch.device | None = None) -> torch.Tensor:
    """The labels of a rotated batch of `n` (= 4N) images: N zeros, N ones, N twos, N threes."""
    return torch.arange(4, device=device).repeat_interleave(n // 4)


class RotationTransform:
    """uint8 batch -> its 4 rotations, then `inner` (the per-image augmentation and normalisation); the horizontal
    flip (probability `hflip`) is drawn first, on the unrotated images, from the batch's generator."""

    def __init__(self, inner: TrainTransform | EvalTransform, hflip: float = 0.0) -> None:
        self.inner, self.hflip = inner, hflip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.hflip > 0:
            flip = torch.rand(x.shape[0], generator=generator) < self.hflip
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return self.inner(rotate_batch(x), generator)


class RotationMetrics(ClassificationMetrics):
    """Rotation accuracy (top-1 over the 4 rotations), cross-entropy and the 4x4 confusion matrix."""

    labels = {"top1": "rotation acc."}

    def __init__(self, device: torch.device, dist: DistInfo | None = None) -> None:
        super().__init__(ROTATIONS, device, dist)

    def files(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        return {"rotation_confusion.json": dict(class_names=self.class_names, matrix=scores["confusion"])}


class RotationTask(ClassificationTask):
    """Classification of rotated batches (`RotationTransform`) into the 4 rotations: the batch's class labels are
    replaced by the rotation labels, which follow from the batch's layout."""

    def __init__(self, model: nn.Module, device: torch.device, *, dist: DistInfo | None = None,
                 label_smoothing: float = 0.0, amp: str = "fp32", channels_last: bool = False) -> None:
        super().__init__(model, ROTATIONS, device, dist=dist, label_smoothing=label_smoothing, amp=amp,
                         channels_last=channels_last)
        self.metrics = RotationMetrics(device, dist)

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch[0].to(self.device, non_blocking=True, memory_format=self.memory_format)
        return x, rotation_labels(x.shape[0], self.device)


# -- SparK -------------------------------------------------------------------------------------------------------
class MaskSeedTransform:
    """`inner`'s images and a mask seed drawn from the batch's generator: (images, seed), the seed a 0-d int64."""

    def __init__(self, inner: TrainTransform | EvalTransform) -> None:
        self.inner = inner

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
        y = self.inner(x, generator)
        return y, torch.randint(2 ** 62, (), generator=generator)


class ReconstructionMetrics:
    """The mean masked-reconstruction loss over the held-out images (each batch weighted by its images), summed
    over ranks; lower is better."""

    primary, higher_is_better = "recon_loss", False
    labels = {"recon_loss": "recon. loss"}
    fmt, axis = "{:.4f}", "reconstruction loss"

    def __init__(self, device: torch.device, dist: DistInfo | None = None) -> None:
        self.device, self.dist = device, dist or DistInfo(device=device)
        self.reset()

    def reset(self) -> None:
        self.sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.n = torch.zeros((), dtype=torch.int64, device=self.device)

    def update(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.sum += outputs.detach().double() * batch[0].shape[0]
        self.n += batch[0].shape[0]

    def compute(self) -> dict[str, Any]:
        for t in (self.sum, self.n):
            all_reduce_sum(t, self.dist)
        return dict(recon_loss=float(self.sum) / max(int(self.n), 1), n=int(self.n))

    def files(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        return {"reconstruction.json": dict(recon_loss=scores["recon_loss"], n=scores["n"])}


class SparKTask:
    """Masked image modelling with a SparK module: batches of (normalised images, mask seed) become (images,
    visible cells), the mask drawn by `spark.random_active` from a generator seeded with the batch's seed."""

    def __init__(self, spark: nn.Module, device: torch.device, *, dist: DistInfo | None = None,
                 amp: str = "fp32") -> None:
        self.model, self.train_module, self.device, self.amp = spark, spark, device, amp
        self.metrics = ReconstructionMetrics(device, dist)

    def to_device(self, batch: tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
        (x, seed), _ = batch
        x = x.to(self.device, non_blocking=True)
        generator = torch.Generator().manual_seed(int(seed))
        return x, self.model.random_active(x.shape[0], generator=generator, device=self.device)

    def batch_size(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[0].shape[0]

    def _forward(self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            return module(batch[0], active=batch[1]).float()

    def loss(self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self._forward(module, batch)
        return loss, loss.detach()

    def predict(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self._forward(model, batch)


def create_spark(cfg: TrainConfig, in_chans: int, input_size: tuple[int, int]) -> nn.Module:
    """The SparK module of `cfg.model` (imported here: heads/spark.py), checked against the input size."""
    from ..heads.spark import SparK

    spark = SparK(cfg.model, in_chans=in_chans, input_size=tuple(input_size), mask_ratio=cfg.mask_ratio,
                  **cfg.model_kwargs)
    r = int(spark.downsample_ratio)
    if input_size[0] % r or input_size[1] % r:
        raise ValueError(f"--method spark: the input {input_size[0]}x{input_size[1]} is not a multiple of "
                         f"{cfg.model}'s total stride {r}; pass --input-size as a multiple of {r}")
    return spark


# -- PixPro ------------------------------------------------------------------------------------------------------
class TwoViews:
    """uint8 batch -> (view1, view2, coords1, coords2): two random resized crops of each image at `size`, each
    flipped with probability `hflip`, brightness- and contrast-jittered (factors uniform in 1 +- `jitter`, with
    probability `jitter_p`), solarised with probability `solarize[k]` for view k, normalised; coords (B, 4) are
    each crop's (x0, y0, x1, y1) over the image's width and height, x0 and x1 swapped where flipped. Every draw
    comes from the batch's generator, view 1's first."""

    def __init__(self, size: int | tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                 scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, jitter: float = 0.4, jitter_p: float = 0.8,
                 solarize: tuple[float, float] = (0.0, 0.2)) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean, self.std, self.scale, self.ratio = tuple(mean), tuple(std), tuple(scale), tuple(ratio)
        self.hflip, self.jitter, self.jitter_p, self.solarize = hflip, jitter, jitter_p, tuple(solarize)

    def _view(self, x: torch.Tensor, solarize: float, generator: torch.Generator | None) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
        n, _, h, w = x.shape
        boxes = random_resized_crop_boxes(n, h, w, self.scale, self.ratio, generator)
        flip = torch.rand(n, generator=generator) < self.hflip
        u = torch.rand(n, 4, generator=generator)
        y = warp(to_float(x), crop_affine(boxes, h, w, self.size, flip), self.size, fill_zero=False)
        on = (u[:, 0] < self.jitter_p).to(y.dtype)
        bright = 1 + on * self.jitter * (2 * u[:, 1] - 1)
        contrast = 1 + on * self.jitter * (2 * u[:, 2] - 1)
        y = (y * bright.view(-1, 1, 1, 1)).clamp_(0, 1)
        y = _blend(y, _gray(y).mean((1, 2, 3), keepdim=True).expand_as(y), contrast)
        y = torch.where((u[:, 3] < solarize).view(-1, 1, 1, 1) & (y >= 0.5), 1 - y, y)
        x0, y0, bw, bh = boxes.unbind(1)
        left, right = x0 / w, (x0 + bw) / w
        coords = torch.stack([torch.where(flip, right, left), y0 / h, torch.where(flip, left, right),
                              (y0 + bh) / h], 1)
        return normalize(y, self.mean, self.std), coords

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        v1, c1 = self._view(x, self.solarize[0], generator)
        v2, c2 = self._view(x, self.solarize[1], generator)
        return v1, v2, c1, c2


class PixProMetrics(ReconstructionMetrics):
    """The mean PixPro loss over the held-out images (both views' terms), summed over ranks; lower is better."""

    primary = "pixpro_loss"
    labels = {"pixpro_loss": "PixPro loss"}
    axis = "PixPro loss"

    def compute(self) -> dict[str, Any]:
        scores = super().compute()
        return dict(pixpro_loss=scores.pop("recon_loss"), **scores)

    def files(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        return {"pixpro.json": dict(pixpro_loss=scores["pixpro_loss"], n=scores["n"])}


class PixProTask(SparKTask):
    """Pixel-level contrast with a PixPro module: batches of ((view1, view2, coords1, coords2), labels) become the
    four tensors on the device; the loss is the module's (which also moves its momentum branch in training)."""

    def __init__(self, pixpro: nn.Module, device: torch.device, *, dist: DistInfo | None = None,
                 amp: str = "fp32") -> None:
        super().__init__(pixpro, device, dist=dist, amp=amp)
        self.metrics = PixProMetrics(device, dist)

    def to_device(self, batch: tuple[tuple[torch.Tensor, ...], torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device, non_blocking=True) for t in batch[0])

    def _forward(self, module: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            return module(*batch).float()


def create_pixpro(cfg: TrainConfig, in_chans: int, total_steps: int) -> nn.Module:
    """The PixPro module of `cfg.model` (imported here: heads/pixpro.py), its momentum schedule over
    `total_steps` forward passes."""
    from ..heads.pixpro import PixPro

    return PixPro(cfg.model, in_chans=in_chans, total_steps=max(1, total_steps), **cfg.model_kwargs)


# -- the data ----------------------------------------------------------------------------------------------------
class Unlabelled:
    """A dataset's images with every label 0 (the labels are not used; for an in-memory set, dropped)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def get_batch(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
        images, labels, skipped = self.dataset.get_batch(indices)
        return images, torch.zeros_like(labels), skipped


def _folder_images(root: Path, cfg: TrainConfig, load: int, in_chans: int, console: Console) -> ImageFolder:
    """Every image under `root`, whatever its subfolders, as one class (its labels all 0)."""
    root = root.resolve()
    return ImageFolder(root.parent, load, mode="RGB" if in_chans == 3 else "L", on_error=cfg.on_error,
                       check=cfg.check_images, classes=(root.name,), report=console.warn,
                       cache=cache_fits(sum(1 for _ in root.rglob("*")), in_chans, load))


def _unlabelled_folder(cfg: TrainConfig, traits: Any, console: Console) -> DataSpec:
    """`--ignore-labels` on a folder: its images (train/ when it has one, its val/ or test/ held out, else a seeded
    `val_fraction` of them), labels never read; the input size and crop decided as `build_data` does."""
    path = Path(cfg.data)
    train_root = path / "train" if (path / "train").is_dir() else path
    held_root = next((path / d for d in ("val", "test") if (path / d).is_dir()), None) if train_root != path else None
    facts = model_size_facts(cfg.model, traits)
    probe = ImageFolder(train_root.resolve().parent, 1, check="none", classes=(train_root.resolve().name,),
                        report=lambda m: None)
    nh, nw, gray = probe_images([p for p, _ in probe.samples])
    input_size, note = decide_input_size((nh, nw), cfg.input_size, from_files=True, **facts)
    pre = model_card(cfg.model).pretrained_cfg
    crop_pct = cfg.crop_pct or (1.0 if max(nh, nw) < facts["card_side"] else pre.crop_pct)
    load = max(1, round(max(input_size) / crop_pct))
    in_chans = cfg.in_chans or (1 if gray else 3)
    full = _folder_images(train_root, cfg, load, in_chans, console)
    if held_root is not None:
        train, held = full, _folder_images(held_root, cfg, load, in_chans, console)
    else:
        tr, va = split_indices(len(full), cfg.val_fraction, cfg.seed)
        train, held = IndexSubset(full, tr), IndexSubset(full, va)
    mean, std = (tuple(pre.mean), tuple(pre.std)) if in_chans == 3 else (
        (round(sum(pre.mean) / 3, 4),), (round(sum(pre.std) / 3, 4),))
    desc = f"images of {cfg.data} without labels ({len(train)} train / {len(held)} eval, {nh}x{nw})"
    return DataSpec(train, held, ("image",), in_chans, input_size, (load, load), crop_pct, mean, std, desc,
                    (nh, nw), note)


def _data(cfg: TrainConfig, traits: Any, console: Console) -> DataSpec:
    """The run's images as a DataSpec; with --ignore-labels a folder read whatever its layout, labels dropped."""
    if cfg.ignore_labels and Path(cfg.data).is_dir() and not is_idx_dir(cfg.data):
        return _limited(cfg, _unlabelled_folder(cfg, traits, console))
    try:
        spec = build_data(cfg, traits, console)
    except ValueError as e:
        if "no class subdirectories" not in str(e) or cfg.ignore_labels:
            raise
        raise ValueError(f"{e}; or pass --ignore-labels to read its images without labels") from None
    if cfg.ignore_labels:
        spec = dataclasses.replace(spec, train=Unlabelled(spec.train), eval=Unlabelled(spec.eval))
    return spec


def _limited(cfg: TrainConfig, spec: DataSpec) -> DataSpec:
    """`spec` with --data-limit / --eval-limit applied."""
    train = spec.train if cfg.data_limit is None else IndexSubset(spec.train, range(min(cfg.data_limit,
                                                                                           len(spec.train))))
    held = spec.eval if cfg.eval_limit is None else IndexSubset(spec.eval, range(min(cfg.eval_limit, len(spec.eval))))
    return dataclasses.replace(spec, train=train, eval=held)


# -- the run -----------------------------------------------------------------------------------------------------
def _traits(cfg: TrainConfig) -> Any:
    """The variant's traits; for SparK with the input multiple raised to the total stride (the masked cells)."""
    from .engine import RESERVED_KWARGS

    reserved = sorted(set(cfg.model_kwargs) & RESERVED_KWARGS)
    if reserved:
        raise ValueError(f"--model-kwargs may not set {reserved}: the run sets them")
    try:
        traits = model_traits(cfg.model, **cfg.model_kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--model {cfg.model} with --model-kwargs {cfg.model_kwargs}: {e}") from None
    if cfg.task == "spark" and traits.reductions:
        traits = dataclasses.replace(traits, input_multiple=math.lcm(traits.input_multiple, traits.reductions[-1]))
    return traits


def _transforms(cfg: TrainConfig, spec: DataSpec) -> tuple[Any, Any]:
    """The training and evaluation batch transforms: whole images (flips only) for images of 64 pixels or less,
    else crops of 0.35-1 of the area; RotNet's rotations or SparK's mask seeds around them. PixPro's two views
    (`TwoViews`) crop 0.2-1 of the area of small images, 0.08-1 (the official range) of larger ones, in training
    and evaluation alike (the held-out views are drawn from the same per-batch generators at every evaluation)."""
    small = max(spec.native_size or spec.input_size) <= SMALL_IMAGE
    scale, ratio = ((1.0, 1.0), (1.0, 1.0)) if small else ((0.35, 1.0), (3 / 4, 4 / 3))
    if cfg.task == "pixpro":   # crops are what makes the pairs: small images are cropped too
        scale = (0.2, 1.0) if small else (0.08, 1.0)
        views = TwoViews(spec.input_size, spec.mean, spec.std, scale, (3 / 4, 4 / 3), cfg.hflip)
        return views, views   # stateless: every draw comes from the batch's generator
    rotnet = cfg.task == "rotnet"
    train_tf = TrainTransform(spec.input_size, spec.mean, spec.std, scale, ratio, 0.0 if rotnet else cfg.hflip)
    eval_tf = EvalTransform(spec.input_size, spec.mean, spec.std, spec.crop_pct)
    if rotnet:
        return RotationTransform(train_tf, cfg.hflip), RotationTransform(eval_tf)
    return MaskSeedTransform(train_tf), MaskSeedTransform(eval_tf)


def _task(cfg: TrainConfig, spec: DataSpec, dist: DistInfo, steps_per_epoch: int = 1) -> tuple[Any, tuple[str, ...]]:
    """The task of `cfg.task` with its model (seeded by cfg.seed) on the run's device, and its class names."""
    torch.manual_seed(cfg.seed)
    if cfg.task == "pixpro":
        pixpro = create_pixpro(cfg, spec.in_chans, steps_per_epoch * cfg.epochs).to(dist.device)
        return PixProTask(pixpro, dist.device, dist=dist, amp=cfg.amp), ("image",)
    if cfg.task == "spark":
        spark = create_spark(cfg, spec.in_chans, spec.input_size).to(dist.device)
        return SparKTask(spark, dist.device, dist=dist, amp=cfg.amp), ("image",)
    drop_path = model_card(cfg.model).drop_path_rate if cfg.drop_path is None else cfg.drop_path
    model = create_model(cfg.model, num_classes=len(ROTATIONS), in_chans=spec.in_chans, drop_path_rate=drop_path,
                         **cfg.model_kwargs)
    model = model.to(dist.device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    return RotationTask(model, dist.device, dist=dist, label_smoothing=cfg.label_smoothing, amp=cfg.amp,
                        channels_last=cfg.channels_last), ROTATIONS


def _defaults(cfg: TrainConfig, n_train: int) -> tuple[TrainConfig, str]:
    """The batch size, learning rate and warm-up left to the method (`DEFAULTS`, no warm-up), and the line saying
    so."""
    resolved, line = dense_defaults(cfg, n_train, *DEFAULTS[cfg.task])
    if not line:
        return resolved, ""
    flags = line.split(": ", 1)[1].split(" (", 1)[0]
    return resolved, (f"defaults for --method {cfg.task}: {flags} ({n_train:,} training images; pass a flag to "
                      "override)")


def build_pretrain_run(cfg: TrainConfig, dist: DistInfo, console: Console) -> RunParts:
    """`convscope pretrain --method rotnet|spark|pixpro`: the images, the task and its model, the loaders (batch 64 and
    lr 2e-3 unless given, no warm-up), the description of the weights it writes, and its figure and encoder
    outputs (pretrain_outputs.py)."""
    from .pretrain_outputs import pretrain_callbacks

    traits = _traits(cfg)
    spec = _data(cfg, traits, console)
    if cfg.task == "pixpro" and traits.reductions:
        h, w = (side // traits.reductions[-1] for side in spec.input_size)
        if min(h, w) < 3:
            console.warn(f"--method pixpro: at input {spec.input_size[0]}x{spec.input_size[1]} the last map of "
                         f"{cfg.model} is {h}x{w}, too few cells for pixel-level pairs; pass --input-size "
                         f"{4 * traits.reductions[-1]} or more for a 4x4 map")
    cfg, defaults_line = _defaults(cfg, len(spec.train))
    train_tf, eval_tf = _transforms(cfg, spec)
    train_loader, eval_loader = pair_loaders(cfg, spec.train, spec.eval, train_tf, dist, eval_tf)
    task, classes = _task(cfg, spec, dist, len(train_loader))
    meta = dict(task=cfg.task, model=model_card(cfg.model).name, model_kwargs=cfg.model_kwargs,
                num_classes=len(classes), in_chans=spec.in_chans, input_size=list(spec.input_size),
                load_size=list(spec.load_size), crop_pct=spec.crop_pct, mean=list(spec.mean), std=list(spec.std),
                class_names=list(classes), data=cfg.data)
    h, w = spec.input_size
    what = dict(rotnet="4 rotations per image", spark=f"{cfg.mask_ratio:.0%} masked",
                pixpro="2 views per image")[cfg.task]
    return RunParts(cfg, task, train_loader, eval_loader, meta, title=f"{meta['model']} {cfg.task} on "
                    f"{spec.description}", shape=f"input {spec.in_chans}x{h}x{w}, {what}",
                    description=spec.description, defaults_line=defaults_line,
                    callbacks=lambda out, weights, con: pretrain_callbacks(cfg, meta, eval_loader, out, weights, con))
