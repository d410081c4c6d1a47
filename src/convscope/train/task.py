"""What a task hands the training loop: a model, a loss, an evaluator and its batches (`Task`), and the first task,
image classification (`ClassificationTask`, scored by `ClassificationMetrics`).

The loop (loop.py) knows nothing of images or classes: it moves each batch with `to_device`, counts its samples
with `batch_size`, and steps the optimizer on `loss`. Evaluation runs `predict` over the evaluation batches and
feeds an `Evaluator`, whose primary score picks the best checkpoint. Another task (segmentation, self-supervised
pre-training) supplies these and reuses the loop, its callbacks, checkpoints and resume as they are.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistInfo, all_reduce_sum
from .recipe import TrainModule, loss_fn


class Evaluator(Protocol):
    """Scores a model over evaluation batches: `reset`, `update` per batch, `compute` once (summed over ranks).

    `compute` returns a dict whose float values are scores (they go into the epoch's record; "loss" as
    eval_loss); other values (counts, matrices) only reach the final result."""

    primary: str                # the score that picks best.safetensors
    higher_is_better: bool
    labels: Mapping[str, str]   # the headline scores, in order, with their label: console, curves, weights files
    fmt: str                    # how the console prints a score, e.g. "{:.2f}%"
    axis: str                   # the y-axis of the scores' curves

    def reset(self) -> None: ...

    def update(self, outputs: Any, batch: Any) -> None: ...

    def compute(self) -> dict[str, Any]: ...

    def files(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        """JSON files (name -> content) the run leaves next to its final weights, from the final scores."""
        ...


class Task(Protocol):
    """What the loop trains and how: see the module text."""

    model: nn.Module          # the network: what the optimizer, the EMA and the weights files hold
    train_module: nn.Module   # what a training step calls (wrapped by DDP / torch.compile): the model or a head on it
    metrics: Evaluator

    def to_device(self, batch: Any) -> Any: ...

    def batch_size(self, batch: Any) -> int:
        """The samples in `batch` (0: an empty batch, which the loop skips)."""
        ...

    def loss(self, module: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """(the batch's mean loss, the outputs) with `module` (train_module, maybe wrapped) in training mode."""
        ...

    def predict(self, model: nn.Module, batch: Any) -> Any:
        """The outputs the evaluator scores, of `model` in eval mode."""
        ...


class ClassificationMetrics:
    """Top-1, top-5 (top-k for k = min(5, classes)), mean cross-entropy and the confusion matrix (rows: true
    class, columns: predicted) of logits against class indices."""

    primary, higher_is_better = "top1", True
    labels = {"top1": "top-1", "top5": "top-5"}
    fmt, axis = "{:.2f}%", "accuracy (%)"

    def __init__(self, class_names: Sequence[str], device: torch.device, dist: DistInfo | None = None) -> None:
        self.class_names, self.device = list(class_names), device
        self.dist = dist or DistInfo(device=device)
        self.reset()

    def reset(self) -> None:
        c = len(self.class_names)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.counts = torch.zeros(2, dtype=torch.int64, device=self.device)   # top-1 correct, top-k correct
        self.confusion = torch.zeros(c * c, dtype=torch.int64, device=self.device)
        self.n = torch.zeros((), dtype=torch.int64, device=self.device)

    def update(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        c, y = len(self.class_names), batch[1]
        logits = outputs.float()
        self.loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        topk = logits.topk(min(5, c), dim=1).indices
        self.counts[0] += (topk[:, 0] == y).sum()
        self.counts[1] += (topk == y[:, None]).any(1).sum()
        self.confusion += torch.bincount(y * c + topk[:, 0], minlength=c * c)
        self.n += y.numel()

    def compute(self) -> dict[str, Any]:
        for t in (self.loss_sum, self.counts, self.confusion, self.n):
            all_reduce_sum(t, self.dist)
        c, total = len(self.class_names), max(int(self.n), 1)
        return dict(top1=100.0 * int(self.counts[0]) / total, top5=100.0 * int(self.counts[1]) / total,
                    loss=float(self.loss_sum) / total, n=int(self.n),
                    confusion=self.confusion.view(c, c).cpu().tolist())

    def files(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        return {"confusion.json": dict(class_names=self.class_names, matrix=scores["confusion"])}


class ClassificationTask:
    """Images (B, C, H, W) and class indices (or Mixup/CutMix soft targets); cross-entropy with label smoothing,
    an optional multi-sample dropout head (recipe.TrainModule), bf16 autocast and channels-last when asked."""

    def __init__(self, model: nn.Module, class_names: Sequence[str], device: torch.device, *,
                 dist: DistInfo | None = None, label_smoothing: float = 0.0, amp: str = "fp32",
                 channels_last: bool = False, msd_samples: int = 0, msd_drop: float = 0.5) -> None:
        self.model, self.device, self.amp, self.label_smoothing = model, device, amp, label_smoothing
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.train_module = TrainModule(model, msd_samples, msd_drop)
        self.metrics = ClassificationMetrics(class_names, device, dist)

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, targets = batch
        return (x.to(self.device, non_blocking=True, memory_format=self.memory_format),
                targets.to(self.device, non_blocking=True))

    def batch_size(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[0].shape[0]

    def _forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            return module(x)

    def loss(self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._forward(module, batch[0])
        return loss_fn(logits, batch[1], self.label_smoothing), logits

    def predict(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self._forward(model, batch[0])
