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
    opened = open_dataset(data, split, in_chans=meta["in_chans"], load_size=meta["load_size"][0],
                          classes=tuple(meta["class_names"]), report=lambda msg: None)   # unreadable: by path
    return _evaluate_opened(model, meta, opened, data, str(checkpoint), batch_size, limit, device, workers)


def evaluate_foreign(model_name: str, checkpoint: str | os.PathLike, data: str, split: str = "test",
                     batch_size: int = 256, limit: int | None = None, device: str = "auto", workers: int = 0,
                     model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """`evaluate_checkpoint` for a weights file from elsewhere (timm's, the official repository's or Hugging Face
    transformers' keys, told apart by the family's converters) of the registered variant `model_name`: the data is
    preprocessed as the variant's card says (pretrained_cfg: input size, mean, std, centre crop), and its classes,
    in their sorted order, must be the checkpoint's classifier outputs. ValueError in one line otherwise.
    `model_kwargs`: constructor options the checkpoint's code differs in (e.g. CvT from transformers:
    `{"mlp_act": "gelu"}`)."""
    from ..models import create_model, model_card
    from ..models.pretrained import load_pretrained

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1; got {limit}")
    device = resolve_device(device)
    card = model_card(model_name)
    cfg = card.pretrained_cfg
    size = list(cfg.input_size[1:])
    opened = open_dataset(data, split, in_chans=cfg.input_size[0], load_size=round(max(size) / cfg.crop_pct),
                          report=lambda msg: None)
    classes = tuple(opened.dataset.classes)
    try:
        model = create_model(card.name, num_classes=len(classes), **(model_kwargs or {}))
    except TypeError as e:     # an unknown constructor option
        raise ValueError(f"model_kwargs {model_kwargs} do not build {card.name}: {e}") from None
    report = load_pretrained(model, card.name, os.fspath(checkpoint), num_classes=len(classes))
    if report.head_reset:
        raise ValueError(f"{checkpoint}'s classifier does not have the {len(classes)} classes of {data} "
                         f"({', '.join(report.head_reset)} do not fit): give data with one class per output, in order")
    meta = dict(model=card.name, in_chans=cfg.input_size[0], input_size=size, mean=list(cfg.mean), std=list(cfg.std),
                crop_pct=cfg.crop_pct, class_names=list(classes))
    result = _evaluate_opened(model.to(device), meta, opened, data, str(checkpoint), batch_size, limit, device,
                              workers)
    return dict(result, keys=report.keys)


def _evaluate_opened(model: torch.nn.Module, meta: dict[str, Any], opened: Any, data: str, checkpoint: str,
                     batch_size: int, limit: int | None, device: torch.device, workers: int) -> dict[str, Any]:
    """evaluate() of `model` on an opened dataset, preprocessed as `meta` says, with the unreadable files named."""
    classes = tuple(meta["class_names"])
    ds = opened.dataset if limit is None else opened.dataset.subset(limit)
    tf = EvalTransform(meta["input_size"], meta["mean"], meta["std"], meta["crop_pct"])
    loader = Loader(ds, tf, batch_size, train=False, workers=workers)
    result = evaluate(model, loader, len(classes), device)
    skipped = [*opened.skipped, *loader.stats.skipped]
    if result["n"] == 0:
        raise ValueError(f"none of the {len(ds)} images of {data} could be read: " + "; ".join(skipped[:5]))
    if not math.isfinite(result["loss"]):
        raise ValueError(f"{checkpoint} gives non-finite outputs (NaN or infinity) on {data}: its weights are broken")
    return dict(result, checkpoint=checkpoint, model=meta["model"], class_names=list(classes),
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
