"""Semantic segmentation on the training loop: `SegmentationTask` (a segmenter from `convscope.heads`, pixel-wise
cross-entropy plus OCR's auxiliary loss) scored by `SegmentationEvaluator` (mIoU, per-class IoU, pixel accuracy;
`train.dense.SegmentationMetrics` summed over ranks), its data (Fashion-MNIST mosaics generated on the fly, or an
images/ + masks/ folder), and the trained model's use: `evaluate_segmentation`, `predict_overlays`.

Data: `--data mosaics` generates the mosaic splits deterministically (`data.mosaic.make_mosaics`, seed 0: train for
training, val held out, test for `convscope eval`), `--input-size N` making them N x N (default 96 x 128); a
folder holds images/ + masks/ (held out: `--val-fraction` of it, seeded) or train/ and val/ (or test/) that do,
with an optional classes.txt (one name a line; default the mosaic classes). Every pair is checked before anything
is built (`data.mosaic.SegmentationFolder`), then brought to one size (the input size, or the first image's):
images bilinear, masks nearest.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.loaders import Loader
from ..data.mosaic import IGNORE_INDEX, MOSAIC_CLASSES, SegmentationFolder, make_mosaics
from ..files import atomic_write_bytes, check_output_dir
from ..heads import HEADS, create_segmenter
from ..models import model_card
from ..models.source import read_meta, resolve_weights_file
from ..utils import resolve_device
from .callbacks import Evaluation
from .config import TrainConfig
from .dense import SegmentationMetrics, predict_logits
from .distributed import DistInfo, all_reduce_sum
from .parts import Normalize, PairArrays, RunParts, dense_defaults, load_task_weights, pair_loaders

MOSAIC_SIZE = (96, 128)
MOSAIC_COUNTS = {"train": 1000, "val": 200, "test": 200}


# -- data --------------------------------------------------------------------------------------------------------
def _class_names(root: Path) -> tuple[str, ...]:
    """root/classes.txt's names (one a line), or the mosaic classes."""
    path = root / "classes.txt"
    if not path.is_file():
        return MOSAIC_CLASSES
    names = tuple(line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip())
    if not 2 <= len(names) < IGNORE_INDEX:
        raise ValueError(f"{path}: expected 2 to {IGNORE_INDEX - 1} class names, one a line; got {len(names)}")
    return names


def _folder_pairs(root: Path, classes: Sequence[str], size: tuple[int, int] | None,
                  in_chans: int | None) -> PairArrays:
    """Every checked pair of an images/ + masks/ folder, brought to `size` (default: the first image's) and
    `in_chans` (default: 3 if any image is in colour)."""
    folder = SegmentationFolder(root, len(classes))
    items = [folder[i] for i in range(len(folder))]
    size = size or tuple(items[0][1].shape)
    c = in_chans or (3 if any(x.shape[0] == 3 for x, _ in items) else 1)
    images, masks = [], []
    for x, m in items:
        x = x.expand(c, -1, -1) if x.shape[0] == 1 else (x.float().mean(0, keepdim=True).round().byte() if c == 1
                                                        else x)
        if tuple(m.shape) != size:
            x = F.interpolate(x[None].float(), size, mode="bilinear", antialias=True, align_corners=False)[0]
            x = x.round().clamp(0, 255).byte()
            m = F.interpolate(m[None, None].float(), size, mode="nearest")[0, 0].long()
        images.append(x)
        masks.append(m)
    return PairArrays(torch.stack(images), torch.stack(masks), str(root))


def open_segmentation(data: str, split: str, *, size: tuple[int, int] | None = None, count: int | None = None,
                      in_chans: int | None = None, classes: Sequence[str] | None = None
                      ) -> tuple[PairArrays, tuple[str, ...], str]:
    """(pairs, class names, description) of `split` of `data`: "mosaics" or a folder (see the module text);
    `count` pairs at most; `classes` the names a model expects (ValueError when the data's differ)."""
    if data == "mosaics":
        n = count or MOSAIC_COUNTS.get(split, 0)
        if split not in MOSAIC_COUNTS:
            raise ValueError(f"mosaic splits are {', '.join(MOSAIC_COUNTS)}; got {split!r}")
        h, w = size or MOSAIC_SIZE
        m = make_mosaics(split, n, size=(h, w))
        images = torch.from_numpy(m.images)[:, None]
        pairs = PairArrays(images.expand(-1, in_chans or 1, -1, -1).contiguous(), torch.from_numpy(m.masks).long())
        found, desc = MOSAIC_CLASSES, f"Fashion-MNIST mosaics ({split}: {n} of {h}x{w})"
    else:
        root = Path(data)
        if not root.is_dir():
            raise ValueError(f"--data {data}: expected 'mosaics' or a directory holding images/ and masks/ "
                             f"(or train/ and val/ subdirectories that do)")
        found = _class_names(root)
        sub = root / split if (root / split).is_dir() else root
        pairs = _folder_pairs(sub, found, size, in_chans)
        pairs = pairs if count is None else pairs.subset(count)
        desc = f"{sub} ({len(pairs)} pairs of {pairs.images.shape[-2]}x{pairs.images.shape[-1]})"
    if classes is not None and tuple(classes) != tuple(found):
        raise ValueError(f"the data's classes {list(found)} differ from the model's {list(classes)}")
    return pairs, tuple(found), desc


def _training_pairs(cfg: TrainConfig) -> tuple[PairArrays, PairArrays, tuple[str, ...], str]:
    """(training pairs, held-out pairs, class names, description) of `cfg.data`."""
    size = (cfg.input_size, cfg.input_size) if cfg.input_size else None
    root = Path(cfg.data)
    if cfg.data == "mosaics" or (root / "train").is_dir():
        train, classes, desc = open_segmentation(cfg.data, "train", size=size, count=cfg.data_limit,
                                                 in_chans=cfg.in_chans)
        held = next((s for s in ("val", "test") if cfg.data == "mosaics" or (root / s).is_dir()), None)
        if held is None:
            raise ValueError(f"--data {cfg.data}: has train/ but no val/ or test/ to evaluate on")
        size = tuple(train.images.shape[-2:])
        test, _, _ = open_segmentation(cfg.data, held, size=size, count=cfg.eval_limit,
                                       in_chans=train.images.shape[1])
        return train, test, classes, desc
    pairs, classes, desc = open_segmentation(cfg.data, "train", size=size, in_chans=cfg.in_chans)
    n_held = math.ceil(cfg.val_fraction * len(pairs))
    if len(pairs) - n_held < 1:
        raise ValueError(f"--data {cfg.data}: {len(pairs)} pair(s) leave none to train on after holding out "
                         f"--val-fraction {cfg.val_fraction:g}")
    order = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(len(pairs)))
    test = PairArrays(pairs.images[order[:n_held]], pairs.targets[order[:n_held]], pairs.name)
    train = PairArrays(pairs.images[order[n_held:]], pairs.targets[order[n_held:]], pairs.name)
    train = train if cfg.data_limit is None else train.subset(cfg.data_limit)
    test = test if cfg.eval_limit is None else test.subset(cfg.eval_limit)
    return train, test, classes, desc


# -- the evaluator and the task ----------------------------------------------------------------------------------
class SegmentationEvaluator:
    """mIoU, pixel accuracy and per-class IoU (fractions, `train.dense.SegmentationMetrics`), the mean pixel
    cross-entropy, and the confusion matrix (rows: true class, columns: predicted), summed over ranks."""

    primary, higher_is_better = "miou", True
    labels = {"miou": "mIoU", "pixel_acc": "pixel acc"}
    fmt, axis = "{:.4f}", "score (0 to 1)"

    def __init__(self, class_names: Sequence[str], device: torch.device, dist: DistInfo | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.class_names, self.device, self.ignore_index = list(class_names), device, ignore_index
        self.dist = dist or DistInfo(device=device)
        self.reset()

    def reset(self) -> None:
        self.counter = SegmentationMetrics(len(self.class_names), self.ignore_index)
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.device)   # loss sum, labelled pixels
        self.n = torch.zeros((), dtype=torch.int64, device=self.device)

    def update(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, target = outputs.float(), batch[1]
        self.counter.update(logits, target)
        self.sums[0] += F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum").double()
        self.sums[1] += (target != self.ignore_index).sum()
        self.n += target.shape[0]

    def compute(self) -> dict[str, Any]:
        confusion = self.counter.confusion.to(self.device)
        for t in (confusion, self.sums, self.n):
            all_reduce_sum(t, self.dist)
        total = SegmentationMetrics(len(self.class_names), self.ignore_index)
        total.confusion = confusion.cpu()
        r = total.compute()
        iou = [None if math.isnan(v) else v for v in r["iou_per_class"].tolist()]
        return dict(miou=r["miou"], pixel_acc=r["pixel_acc"], loss=float(self.sums[0] / self.sums[1].clamp(min=1)),
                    n=int(self.n), iou_per_class=iou, confusion=r["confusion"].tolist())

    def files(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        return {"iou.json": dict(class_names=self.class_names, iou_per_class=scores["iou_per_class"],
                                 miou=scores["miou"], pixel_acc=scores["pixel_acc"], confusion=scores["confusion"])}


class _TrainForward(nn.Module):
    """A segmenter's `forward_train` as a module's forward (what DDP and torch.compile wrap)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return self.model.forward_train(x)


class SegmentationTask:
    """Images (B, C, H, W) and label masks (B, H, W); pixel-wise cross-entropy (IGNORE_INDEX left out) plus
    `aux_weight` x the auxiliary logits' (OCR); evaluation on whole images, or averaged over sliding windows."""

    def __init__(self, model: nn.Module, class_names: Sequence[str], device: torch.device, *,
                 dist: DistInfo | None = None, amp: str = "fp32", channels_last: bool = False,
                 window: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                 aux_weight: float = 0.4) -> None:
        self.model, self.device, self.amp, self.aux_weight = model, device, amp, aux_weight
        self.num_classes, self.window, self.stride = len(class_names), window, stride
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.train_module = _TrainForward(model)
        self.metrics = SegmentationEvaluator(class_names, device, dist)

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, masks = batch
        return (x.to(self.device, non_blocking=True, memory_format=self.memory_format),
                masks.to(self.device, non_blocking=True))

    def batch_size(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[0].shape[0]

    def loss(self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            out = module(batch[0])
        logits = out["logits"].float()
        loss = F.cross_entropy(logits, batch[1], ignore_index=IGNORE_INDEX)
        if out.get("aux") is not None and self.aux_weight:
            loss = loss + self.aux_weight * F.cross_entropy(out["aux"].float(), batch[1], ignore_index=IGNORE_INDEX)
        return loss, logits

    def predict(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            return predict_logits(model, batch[0], self.num_classes, window=self.window, stride=self.stride).float()


# -- the run -----------------------------------------------------------------------------------------------------
def build_segmentation_run(cfg: TrainConfig, dist: DistInfo) -> RunParts:
    """`convscope train --task segmentation`: the data, the segmenter (`cfg.model` as backbone, `cfg.head`),
    the task and its loaders (batch 8 and lr 1e-3 unless given)."""
    if cfg.head not in HEADS:
        raise ValueError(f"--head must be one of {', '.join(HEADS)}; got {cfg.head!r}")
    card = model_card(cfg.model)
    train, held_out, classes, desc = _training_pairs(cfg)
    cfg, defaults_line = dense_defaults(cfg, len(train), 8, 1e-3)
    mean, std = train.channel_stats()
    in_chans, size = train.images.shape[1], list(train.images.shape[-2:])
    drop_path = card.drop_path_rate if cfg.drop_path is None else cfg.drop_path
    torch.manual_seed(cfg.seed)
    model = create_segmenter(cfg.model, cfg.head, len(classes), in_chans=in_chans, drop_path_rate=drop_path,
                             **cfg.model_kwargs)
    model = model.to(dist.device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    task = SegmentationTask(model, classes, dist.device, dist=dist, amp=cfg.amp, channels_last=cfg.channels_last)
    train_loader, eval_loader = pair_loaders(cfg, train, held_out, Normalize(mean, std), dist)
    meta = dict(task="segmentation", model=card.name, model_kwargs=cfg.model_kwargs, head=cfg.head,
                num_classes=len(classes), in_chans=in_chans, input_size=size, load_size=size, crop_pct=1.0,
                mean=list(mean), std=list(std), class_names=list(classes), data=cfg.data)
    return RunParts(cfg, task, train_loader, eval_loader, meta, title=f"{cfg.head} on {card.name}, {desc}",
                    shape=f"input {in_chans}x{size[0]}x{size[1]}, {len(classes)} classes", description=desc,
                    defaults_line=defaults_line, final=dict(class_names=list(classes)))


# -- using a trained segmenter -----------------------------------------------------------------------------------
def load_segmenter(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The segmenter of a weights file written by `convscope train --task segmentation` (or its run directory),
    in eval mode on `device`, and its description; the description is checked before anything is built and the
    file is read as safetensors (no pickled code)."""
    path = resolve_weights_file(checkpoint)
    meta = read_meta(path)
    if meta.get("task") != "segmentation" or meta.get("head") not in HEADS:
        raise ValueError(f"{path}: not a segmentation model (expected task 'segmentation' and a head among "
                         f"{', '.join(HEADS)}; got task {meta.get('task')!r}, head {meta.get('head')!r})")
    model = create_segmenter(meta["model"], meta["head"], meta["num_classes"], in_chans=meta["in_chans"],
                             **meta["model_kwargs"])
    load_task_weights(model, path, f"{meta['head']} on {meta['model']}")
    return model.to(device).eval(), meta


def _window(window: Sequence[int] | None, stride: Sequence[int] | None) -> None:
    if stride is not None and window is None:
        raise ValueError("--stride needs --window (the sliding window it moves)")
    for name, v in (("window", window), ("stride", stride)):
        if v is not None and (len(v) != 2 or min(v) < 1):
            raise ValueError(f"--{name} must be two positive sides H,W; got {v}")


def evaluate_segmentation(checkpoint: str | os.PathLike, data: str, split: str = "test", batch_size: int = 16,
                          limit: int | None = None, device: str = "auto", window: Sequence[int] | None = None,
                          stride: Sequence[int] | None = None) -> dict[str, Any]:
    """mIoU, pixel accuracy, per-class IoU and loss of a trained segmenter on `split` of `data` (mosaics or a
    folder): on whole images brought to the model's input size, or, with `window`, on images of their own size
    (mosaics 96x128, a folder's first image's) with the logits averaged over sliding windows."""
    _window(window, stride)
    dev = resolve_device(device)
    model, meta = load_segmenter(checkpoint, dev)
    size = tuple(meta["input_size"]) if window is None else None
    pairs, classes, desc = open_segmentation(data, split, size=size, count=limit, in_chans=meta["in_chans"],
                                             classes=meta["class_names"])
    task = SegmentationTask(model, classes, dev, window=window, stride=stride)
    loader = Loader(pairs, Normalize(meta["mean"], meta["std"]), batch_size, train=False)
    r = Evaluation(task, loader, {}).evaluate(model)   # the training loop's own evaluation pass
    return dict(r, checkpoint=str(checkpoint), model=f"{meta['head']} on {meta['model']}", class_names=list(classes),
                data=desc, window=None if window is None else list(window),
                stride=None if stride is None else list(stride or window))


#: Overlay colours (RGB) of classes 1, 2, ...; the background (0) and ignored pixels are left untinted.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255))


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The RGB image (H, W, 3) uint8 with each pixel of class k >= 1 blended (`alpha`) with PALETTE[k - 1]."""
    out = image.astype(np.float32)
    for k in np.unique(labels):
        if 1 <= k < IGNORE_INDEX:
            where = labels == k
            out[where] = (1 - alpha) * out[where] + alpha * np.array(PALETTE[(k - 1) % len(PALETTE)], np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def _read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB (H, W, 3) uint8; ValueError naming the file when it cannot be read."""
    from PIL import Image

    if not path.is_file():
        raise ValueError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def predict_overlays(checkpoint: str | os.PathLike, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                     device: str = "auto", window: Sequence[int] | None = None,
                     stride: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Segment each image file (brought to the model's input size, the labels brought back, nearest) and write
    OUT_DIR/<stem>_overlay.png (the image tinted by class) and OUT_DIR/<stem>_mask.png (class indices);
    returns per image its files and the share of its pixels per predicted class."""
    from ..extras import require

    require("PIL", "reading and writing image files")
    from PIL import Image

    _window(window, stride)
    out = check_output_dir(out_dir, "--out")
    pictures = [_read_rgb(Path(p)) for p in images]   # every file checked before any work
    dev = resolve_device(device)
    model, meta = load_segmenter(checkpoint, dev)
    norm, size, results = Normalize(meta["mean"], meta["std"]), tuple(meta["input_size"]), []
    out.mkdir(parents=True, exist_ok=True)
    for p, rgb in zip(images, pictures, strict=True):
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        x = x.mean(1, keepdim=True) if meta["in_chans"] == 1 else x
        x = F.interpolate(x, size, mode="bilinear", antialias=True, align_corners=False).round().clamp(0, 255)
        with torch.inference_mode():
            logits = predict_logits(model, norm(x).to(dev), meta["num_classes"], window=window, stride=stride)
        labels = F.interpolate(logits.argmax(1, keepdim=True).float().cpu(), rgb.shape[:2], mode="nearest")
        labels = labels[0, 0].byte().numpy()
        stem = Path(p).stem
        files = {}
        for kind, array in (("overlay", overlay(rgb, labels)), ("mask", labels)):
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="PNG")
            files[kind] = str(atomic_write_bytes(out / f"{stem}_{kind}.png", buf.getvalue()))
        counts = np.bincount(labels.ravel(), minlength=meta["num_classes"]) / labels.size
        results.append(dict(image=str(p), **files, classes={meta["class_names"][k]: round(float(v), 4)
                                                           for k, v in enumerate(counts) if v > 0}))
    return results
