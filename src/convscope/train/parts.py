"""What the engine builds for a task before the loop runs (`RunParts`), and what the dense tasks share: in-memory
image/target pairs batched by the loader (`PairArrays`) and the normalisation they are fed through."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..data.loaders import Loader
from ..models.source import check_finite, read_meta, resolve_weights_file
from .config import PRETRAIN_TASKS, TASKS, TrainConfig
from .distributed import DistInfo
from .task import Task


@dataclass
class RunParts:
    """A task's run, ready for the loop: the config with the data-aware defaults filled in, the task, its loaders,
    the description every weights file carries, the console's title and opening facts, and what the final result
    adds (e.g. the class names)."""

    cfg: TrainConfig
    task: Task
    train_loader: Loader
    eval_loader: Loader
    meta: dict[str, Any]
    title: str                    # "<model> on <data>": the curves' title
    shape: str                    # "input 1x28x28, 10 classes": the opening line's middle
    description: str              # the data, in words
    defaults_line: str = ""
    final: dict[str, Any] = field(default_factory=dict)
    report: Callable[[Callable[[str], None]], None] | None = None   # warnings after the run, given console.warn
    callbacks: Callable[..., list] | None = None   # more of the loop's callbacks, given (out, weights, console)


class PairArrays:
    """In-memory pairs: uint8 images (N, C, H, W) and targets (N, ...) (masks, or high-resolution images), batched
    whole by the loader (`get_batch`)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, name: str = "pairs") -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or targets.shape[0] != images.shape[0]:
            raise ValueError(f"images must be uint8 (N, C, H, W) with one target each; got {images.dtype} "
                             f"{tuple(images.shape)} and targets {tuple(targets.shape)}")
        self.images, self.targets, self.name = images, targets, name

    def __len__(self) -> int:
        return self.images.shape[0]

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return self.images[idx], self.targets[idx], ()

    def subset(self, n: int) -> PairArrays:
        """The first `n` pairs."""
        return PairArrays(self.images[:n], self.targets[:n], self.name)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation of the images' pixels, scaled to [0, 1]."""
        x = self.images.transpose(0, 1).reshape(self.images.shape[1], -1).double() / 255
        std = x.std(1, unbiased=False).clamp(min=1e-3)
        return tuple(round(float(v), 4) for v in x.mean(1)), tuple(round(float(v), 4) for v in std)


class Normalize:
    """The batch transform of the dense tasks: uint8 images to float, (x / 255 - mean) / std per channel (no
    random augmentation: a flip or crop would have to move the targets too)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return (images.float() / 255 - self.mean) / self.std


def pair_loaders(cfg: TrainConfig, train: PairArrays, held_out: PairArrays, transform: Normalize,
                 dist: DistInfo, eval_transform: Callable | None = None) -> tuple[Loader, Loader]:
    """The training loader (shuffled, seeded) and the evaluation loader (through `eval_transform` when given) of a
    dense task's pairs."""
    common = dict(seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, workers=cfg.workers,
                  pin_memory=dist.device.type == "cuda", prefetch_factor=cfg.prefetch)
    return (Loader(train, transform, cfg.batch_size, train=True, **common),
            Loader(held_out, eval_transform or transform, cfg.eval_batch_size or 2 * cfg.batch_size, train=False,
                   **common))


def dense_defaults(cfg: TrainConfig, n_train: int, batch: int, lr: float) -> tuple[TrainConfig, str]:
    """A dense task's settings left to the data: batch size `batch` (at most the training pairs), learning rate
    `lr`, no warm-up; and the line saying so."""
    import dataclasses

    chosen: dict[str, Any] = {}
    if cfg.batch_size is None:
        chosen["batch_size"] = min(batch, n_train)
    if cfg.lr is None:
        chosen["lr"] = lr
    if cfg.warmup_epochs is None:
        chosen["warmup_epochs"] = 0.0
    resolved = dataclasses.replace(cfg, **chosen)
    if resolved.min_lr > resolved.lr:
        raise ValueError(f"--min-lr {resolved.min_lr:g} is above the peak learning rate {resolved.lr:g}")
    if not chosen:
        return resolved, ""
    flags = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in chosen.items())
    return resolved, f"defaults for --task {cfg.task}: {flags} ({n_train:,} training pairs; pass a flag to override)"


def checkpoint_task(checkpoint: str | os.PathLike) -> str:
    """The task a weights file (or run directory) was trained for: its metadata's "task", classification when it
    names none; ValueError / FileNotFoundError in one line when it is no convscope weights file."""
    meta = read_meta(resolve_weights_file(checkpoint), registered=False)
    task = meta.get("task", "classification")
    if task in PRETRAIN_TASKS:
        raise ValueError(f"{checkpoint}: a `convscope pretrain --method {task}` model, which has no classes to "
                         f"score; fine-tune its encoder.safetensors with `convscope train --init-from` first")
    if task not in TASKS:
        raise ValueError(f"{checkpoint}: unknown task {task!r} in its metadata; expected one of {', '.join(TASKS)}")
    return task


def load_task_weights(model: nn.Module, path: str | os.PathLike, what: str) -> nn.Module:
    """A dense task's weights file (safetensors: no pickled code; every tensor finite) loaded into `model`, built
    from the file's checked description; ValueError naming the file and `what` when the weights do not fit."""
    state = load_file(str(path))
    check_finite(state, str(path))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        reason = " ".join(str(e).split()[6:])   # torch's text past "Error(s) in loading state_dict for X:"
        raise ValueError(f"{path}: its weights do not fit {what}: {reason[:300]}") from None
    return model
