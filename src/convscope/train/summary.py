"""What a run prints about itself: the line that opens it, `TrainResult` and its summary lines, and the confusion
matrix as text."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .config import TrainConfig
from .loop import Loop
from .report import format_duration


@dataclass
class TrainResult:
    """What `train` returns: the final model (and EMA), the metric history and where the time went."""

    out: Path
    model: nn.Module
    ema: nn.Module | None
    history: list[dict[str, Any]]
    final: dict[str, Any]
    timers: dict[str, float]
    wall_s: float
    train_images: int
    resumed_from: int | None = None
    rank: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def describe_run(cfg: TrainConfig, shape: str, description: str, loop: Loop, name: str) -> str:
    """The line a run opens with: model, its parameters (those the optimizer trains; frozen ones, such as PixPro's
    momentum branch, apart), its input (`shape`), the data, schedule, global batch, dtype and device."""
    dist = loop.dist
    trained = sum(p.numel() for p in loop.model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in loop.model.parameters() if not p.requires_grad)
    return (f"{name}: {trained / 1e6:.3f} M parameters" + (f" (and {frozen / 1e6:.3f} M not trained)" * bool(frozen))
            + f", {shape}; {description}; "
            f"{loop.steps_per_epoch} steps/epoch x {cfg.epochs} epochs, global batch "
            f"{cfg.batch_size * cfg.accum_steps * dist.world_size}, {cfg.amp}, {loop.device}"
            + (f", {dist.world_size} processes" if dist.enabled else ""))


def _headline(result: TrainResult) -> str:
    """The final scores of the run's task, with its best epoch."""
    f, task = result.final, result.meta.get("task", "classification")
    if task == "segmentation":
        return (f"mIoU {f['miou']:.4f}  pixel acc {f['pixel_acc']:.4f}  (best mIoU {f['best_miou']:.4f} at epoch "
                f"{f['best_epoch']}) on {f['n']} images")
    if task == "sr":
        return (f"PSNR {f['psnr']:.2f} dB  SSIM {f['ssim']:.4f}  (bicubic {f['bicubic_psnr']:.2f} dB, "
                f"{f['bicubic_ssim']:.4f}; best PSNR {f['best_psnr']:.2f} dB at epoch {f['best_epoch']}) on "
                f"{f['n']} images")
    if task == "rotnet":
        return (f"rotation accuracy {f['top1']:.2f}%  (best {f['best_top1']:.2f}% at epoch {f['best_epoch']}) on "
                f"{f['n'] // 4} held-out images x 4 rotations")
    if task == "pixpro":
        return (f"PixPro loss {f['pixpro_loss']:.4f}  (best {f['best_pixpro_loss']:.4f} at epoch {f['best_epoch']}; "
                f"-4 is perfect) on {f['n']} held-out images x 2 views")
    if task == "spark":
        return (f"reconstruction loss {f['recon_loss']:.4f}  (best {f['best_recon_loss']:.4f} at epoch "
                f"{f['best_epoch']}) on {f['n']} held-out images")
    return (f"top-1 {f['top1']:.2f}%  top-5 {f['top5']:.2f}%  (best top-1 {f['best_top1']:.2f}% at epoch "
            f"{f['best_epoch']}) on {f['n']} images")


def summarize(result: TrainResult) -> str:
    """A few lines: the final scores, time, and where the training time went."""
    lines = [f"{_headline(result)}; wall time {format_duration(result.wall_s)}; "
             f"weights in {result.out / 'last.safetensors'}"]
    t = result.timers
    phases = [p for p in ("setup", "data", "forward", "backward", "optimizer", "eval", "checkpoint") if p in t]
    total = sum(t[p] for p in phases)
    if total > 0:
        lines.append("time: " + ", ".join(f"{p} {t[p]:.1f} s ({100 * t[p] / total:.0f}%)" for p in phases))
    return "\n".join(lines)


def dumps_confusion(matrix: list[list[int]], classes: Sequence[str]) -> str:
    """The confusion matrix as aligned text (rows: true class, columns: predicted)."""
    width = max(5, *(len(str(v)) for row in matrix for v in row))
    names = [str(c)[:24] for c in classes]   # long names are cut at 24 characters
    label = max(len(n) for n in names) if names else 0
    index = len(str(max(len(classes) - 1, 0)))
    head = " " * (index + 1 + label) + "".join(f" {i:>{width}}" for i in range(len(classes)))
    rows = [f"{i:>{index}} {names[i]:<{label}}" + "".join(f" {v:>{width}}" for v in row)
            for i, row in enumerate(matrix)]
    return "\n".join([head] + rows)
