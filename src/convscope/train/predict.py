"""Using a trained model: evaluate it on a dataset, or classify image files, from its weights file alone."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..extras import require
from ..models.source import load_model
from ..utils import resolve_device
from .datasets import FASHION_MNIST_CLASSES, ImageFolder, fashion_mnist, is_idx_dir, load_image, repeat_channels
from .evaluation import evaluate
from .loaders import Loader
from .transforms import EvalTransform


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str, split: str = "test", batch_size: int = 256,
                        limit: int | None = None, device: str = "auto", workers: int = 0) -> dict[str, Any]:
    """Top-1/top-5, loss and confusion matrix of a trained model on 'fashion-mnist' (split 'train' or 'test'), a
    Fashion-MNIST idx directory, or an image folder (its `split` subdirectory if it has one, else itself)."""
    device = resolve_device(device)
    model, meta = load_model(checkpoint, device)
    classes = tuple(meta["class_names"])
    path = Path(data)
    if data == "fashion-mnist" or (path.is_dir() and is_idx_dir(path)):
        ds = repeat_channels(fashion_mnist(None if data == "fashion-mnist" else path, split), meta["in_chans"])
        data_classes = FASHION_MNIST_CLASSES
    elif path.is_dir():
        require("PIL", "reading an image folder")
        sub = path / split if (path / split).is_dir() else path
        ds = ImageFolder(sub, load_size=meta["load_size"][0], mode="RGB" if meta["in_chans"] == 3 else "L",
                         classes=classes)
        data_classes = ds.classes
    else:
        raise FileNotFoundError(f"--data {data!r} is neither 'fashion-mnist' nor a directory")
    if tuple(data_classes) != classes:
        raise ValueError(f"the data's classes {list(data_classes)} differ from the checkpoint's {list(classes)}")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1; got {limit}")
        ds = ds.subset(limit)
    tf = EvalTransform(meta["input_size"], meta["mean"], meta["std"], meta["crop_pct"])
    loader = Loader(ds, tf, batch_size, train=False, workers=workers)
    result = evaluate(model, loader, len(classes), device)
    skipped = list(loader.stats.skipped)
    if result["n"] == 0:
        raise ValueError(f"none of the {len(ds)} images of {data} could be read: " + "; ".join(skipped[:5]))
    return dict(result, checkpoint=str(checkpoint), model=meta["model"], class_names=list(classes),
                images=len(ds), skipped=skipped)


def predict_images(checkpoint: str | os.PathLike, images: Sequence[str | os.PathLike], topk: int = 3,
                   device: str = "auto") -> list[dict[str, Any]]:
    """For each image file, the `topk` classes with their probabilities."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1; got {topk}")
    require("PIL", "reading image files")
    device = resolve_device(device)
    model, meta = load_model(checkpoint, device)
    classes = meta["class_names"]
    mode = "RGB" if meta["in_chans"] == 3 else "L"
    tf = EvalTransform(meta["input_size"], meta["mean"], meta["std"], meta["crop_pct"])
    batch = []
    for p in images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"no image file at {p}")
        try:
            batch.append(load_image(p, mode, meta["load_size"][0]))
        except Exception as e:
            raise ValueError(f"cannot read image {p}: {type(e).__name__}: {e}") from None
    with torch.inference_mode():
        probs = model(tf(torch.stack(batch)).to(device)).float().softmax(-1)
    k = min(topk, len(classes))
    top = probs.topk(k, dim=1)
    return [dict(image=str(p), top=[dict(label=classes[i], index=int(i), prob=float(v))
                                    for v, i in zip(vals.tolist(), idx.tolist(), strict=False)])
            for p, vals, idx in zip(images, top.values, top.indices, strict=False)]
