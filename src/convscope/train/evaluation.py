"""Evaluation: top-1, top-5, loss and the confusion matrix of a model on a loader, summed over DDP ranks."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loaders import Loader
from .distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, num_classes: int, device: torch.device, amp: str = "fp32",
             channels_last: bool = False, dist: DistInfo | None = None) -> dict[str, Any]:
    """Top-1, top-5 (top-k for k = min(5, classes)), mean cross-entropy and the confusion matrix
    (rows: true class, columns: predicted), summed over all ranks."""
    dist = dist or DistInfo(device=device)
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(2, dtype=torch.int64, device=device)   # top-1 correct, top-k correct
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    n = torch.zeros((), dtype=torch.int64, device=device)
    loader.set_epoch(0)
    for x, y in loader:
        x = x.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        y = y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        topk = logits.topk(k, dim=1).indices
        counts[0] += (topk[:, 0] == y).sum()
        counts[1] += (topk == y[:, None]).any(1).sum()
        confusion += torch.bincount(y * num_classes + topk[:, 0], minlength=num_classes * num_classes)
        n += y.numel()
    for t in (loss_sum, counts, confusion, n):
        all_reduce_sum(t, dist)
    model.train(was_training)
    total = max(int(n), 1)
    return dict(top1=100.0 * int(counts[0]) / total, top5=100.0 * int(counts[1]) / total,
                loss=float(loss_sum) / total, n=int(n),
                confusion=confusion.view(num_classes, num_classes).cpu().tolist())

