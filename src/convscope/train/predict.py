"""Using a trained model: evaluate it on a dataset, or classify image files, from its weights file alone."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import load_image
from ..data.loaders import Loader
from ..data.open import open_dataset
from ..data.transforms import EvalTransform
from ..extras import require
from ..models.source import load_model
from ..utils import resolve_device
from .evaluation import evaluate


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str, split: str = "test", batch_size: int = 256,
                        limit: int | None = None, device: str = "auto", workers: int = 0) -> dict[str, Any]:
    """Top-1/top-5, loss and confusion matrix of a trained model on `split` of any spec `open_dataset` takes.

    `images` counts the files evaluated and those that could not be read; `skipped` names the unreadable ones
    (found up front or while decoding), which are not counted in `n`."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1; got {limit}")
    device = resolve_device(device)
    model, meta = load_model(checkpoint, device)
    classes = tuple(meta["class_names"])
    opened = open_dataset(data, split, in_chans=meta["in_chans"], load_size=meta["load_size"][0], classes=classes,
                          report=lambda msg: None)   # unreadable files are returned in the result, by path
    ds = opened.dataset if limit is None else opened.dataset.subset(limit)
    tf = EvalTransform(meta["input_size"], meta["mean"], meta["std"], meta["crop_pct"])
    loader = Loader(ds, tf, batch_size, train=False, workers=workers)
    result = evaluate(model, loader, len(classes), device)
    skipped = [*opened.skipped, *loader.stats.skipped]
    if result["n"] == 0:
        raise ValueError(f"none of the {len(ds)} images of {data} could be read: " + "; ".join(skipped[:5]))
    if not math.isfinite(result["loss"]):
        raise ValueError(f"{checkpoint} gives non-finite outputs (NaN or infinity) on {data}: its weights are broken")
    return dict(result, checkpoint=str(checkpoint), model=meta["model"], class_names=list(classes),
                images=len(ds) + len(opened.skipped), skipped=skipped)


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
    broken = [str(p) for p, row in zip(images, probs, strict=True) if not torch.isfinite(row).all()]
    if broken:
        raise ValueError(f"{checkpoint} gives non-finite outputs (NaN or infinity) for {', '.join(broken[:3])}"
                         f"{' ...' if len(broken) > 3 else ''}: its weights are broken")
    k = min(topk, len(classes))
    top = probs.topk(k, dim=1)
    return [dict(image=str(p), top=[dict(label=classes[i], index=int(i), prob=float(v))
                                    for v, i in zip(vals.tolist(), idx.tolist(), strict=False)])
            for p, vals, idx in zip(images, top.values, top.indices, strict=False)]
