"""What a pre-training run leaves beside the usual run directory: a figure per epoch (`Figures`: SparK's input,
masked input and reconstruction of 4 held-out images; RotNet's 4 rotations of 4 held-out images with the predicted
rotation; PixPro's two views of 4 held-out images and the similarity of view 2's cells to view 1's centre cell)
under figures/, and `encoder.safetensors` at the end (`EncoderFile`): the encoder's weights without the
classifier, described so that `convscope train --init-from` (and `--pretrained FILE`) fine-tunes them, the
classifier freshly initialised.

The figures are drawn after the epoch's evaluation, outside the timed steps (their own "figures" phase), from
fixed held-out images and, for SparK, a mask from a generator seeded by the run's seed: nothing touches the global
RNG, so a resumed run stays bit-exact.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.loaders import Loader
from ..extras import available, missing_message
from ..models.pretrained.adapt import transfer_layers
from ..models.source import save_model_file
from .config import TrainConfig
from .loop import Callback, Loop
from .pretraining import ROTATIONS

FIGURE_IMAGES = 4
ENCODER_FILE = "encoder.safetensors"


def encoder_state_dict(model: nn.Module, task: str, model_name: str) -> dict[str, torch.Tensor]:
    """The encoder's weights of a pre-training model: SparK's or PixPro's `encoder_state_dict()` (PixPro's online
    encoder), or the RotNet classifier's
    weights without its classifier layers (those `transfer_layers` names)."""
    if task in ("spark", "pixpro"):
        return dict(model.encoder_state_dict())
    heads = set(transfer_layers(model_name)[1])
    return {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in heads}


def encoder_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The description of encoder.safetensors: the run's model, channels, input size and normalisation, marked as
    an encoder (`"encoder": true`: no classifier; the one class is a placeholder the metadata check needs)."""
    return dict(meta, num_classes=1, class_names=["encoder"], encoder=True, pretrain=meta["task"],
                task="classification")


class EncoderFile(Callback):
    """Writes `out`/encoder.safetensors from `weights` when the run ends (rank 0)."""

    name = "encoder"

    def __init__(self, out: Path, weights: nn.Module, meta: Mapping[str, Any]) -> None:
        self.out, self.weights, self.meta = Path(out), weights, dict(meta)

    def on_fit_end(self, loop: Loop) -> None:
        if loop.dist.is_main:
            sd = encoder_state_dict(self.weights, self.meta["task"], self.meta["model"])
            save_model_file(self.out / ENCODER_FILE, sd, dict(encoder_meta(self.meta), epoch=loop.epochs,
                                                              step=loop.global_step))


def _shown(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalised images (B, C, H, W) back to [0, 1], as (B, H, W, C) for imshow."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.detach().float().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1)


def _draw(path: Path, rows: list[tuple[str, torch.Tensor, list[str]]], title: str) -> None:
    """A grid: one row per (label, images (B, H, W, C) in [0, 1], per-image captions), saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    cols = max(r[1].shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.7 * len(rows)), squeeze=False)
    for i, (label, images, captions) in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < images.shape[0]:
                img = images[j].numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
                ax.set_title(captions[j] if j < len(captions) else "", fontsize=7)
        axes[i][0].text(-0.1, 0.5, label, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class Figures(Callback):
    """After each epoch's evaluation, `out`/figures/<task>_epoch<NNN>.png from `weights` on the first held-out
    images (rank 0); without matplotlib one line says so at the start and no figure is drawn."""

    name = "figures"

    def __init__(self, cfg: TrainConfig, meta: Mapping[str, Any], eval_loader: Loader, out: Path, weights: nn.Module,
                 warn: Callable[[str], None]) -> None:
        self.task, self.seed, self.meta = cfg.task, cfg.seed, dict(meta)
        self.loader, self.out, self.weights, self.warn = eval_loader, Path(out), weights, warn
        self.enabled = available("matplotlib")

    def on_fit_start(self, loop: Loop) -> None:
        if not self.enabled and loop.dist.is_main:
            self.warn(missing_message("matplotlib", f"the {self.task} figures") + "; the run writes everything else")

    def _images(self) -> torch.Tensor:
        """The first held-out images as the evaluation transform feeds them (for RotNet: in their 4 rotations)."""
        data = self.loader.dataset
        images, _, _ = data.get_batch(list(range(min(FIGURE_IMAGES, len(data)))))
        x = self.loader.batched.transform(images, torch.Generator().manual_seed(self.seed))
        if self.task == "pixpro":   # the two views, one after the other, and their crops
            self.coords = torch.cat(x[2:])
            return torch.cat(x[:2])
        return x[0] if isinstance(x, tuple) else x

    @torch.no_grad()
    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        if not (self.enabled and loop.dist.is_main):
            return
        with loop.timer("figures"):
            was_training = self.weights.training
            self.weights.eval()
            try:
                x = self._images().to(loop.device)
                rows = dict(spark=self._spark_rows, rotnet=self._rotnet_rows, pixpro=self._pixpro_rows)[self.task](x)
            finally:
                self.weights.train(was_training)
            path = self.out / "figures" / f"{self.task}_epoch{loop.epoch:03d}.png"
            _draw(path, rows, f"{self.meta['model']} {self.task}, epoch {loop.epoch} (held-out images)")

    def _spark_rows(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor, list[str]]]:
        """Input, masked input and reconstruction of the held-out images, under a mask seeded by the run's seed."""
        active = self.weights.random_active(x.shape[0], generator=torch.Generator().manual_seed(self.seed),
                                            device=x.device)
        masked, pred, _ = self.weights.reconstruct(x, active)
        m, s = self.meta["mean"], self.meta["std"]
        return [("input", _shown(x, m, s), []), ("masked", _shown(masked, m, s), []),
                ("prediction", _shown(pred, m, s), [])]

    def _pixpro_rows(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor, list[str]]]:
        """Both views of the held-out images, and how alike view 2's momentum features are, cell by cell, to
        view 1's propagated feature at its centre cell (cosine, -1 black to 1 white; the cell that sees the same
        part of the image should be brightest), captioned with that cell's centre in each view's frame."""
        from ..heads.pixpro import cell_centres

        n = x.shape[0] // 2
        v1, v2 = x[:n], x[n:]
        sim = self.weights.similarity(v1, v2).float().cpu()
        h, w = sim.shape[-2:]
        shown = torch.nn.functional.interpolate(((sim + 1) / 2).unsqueeze(1), size=v2.shape[-2:], mode="nearest")
        centre = cell_centres(self.coords[:n].float(), h, w)[:, (h // 2) * w + w // 2]
        m, s = self.meta["mean"], self.meta["std"]
        return [("view 1", _shown(v1, m, s), [f"centre cell at ({a:.2f}, {b:.2f})" for a, b in centre.tolist()]),
                ("view 2", _shown(v2, m, s), []),
                ("similarity", shown.clamp(0, 1).permute(0, 2, 3, 1), [f"{h}x{w} cells"] * n)]

    def _rotnet_rows(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor, list[str]]]:
        """Each rotation of the held-out images, captioned with the predicted rotation (and whether it is right)."""
        pred = self.weights(x).argmax(1).cpu()
        n = x.shape[0] // len(ROTATIONS)
        shown = _shown(x, self.meta["mean"], self.meta["std"])
        rows = []
        for k, deg in enumerate(ROTATIONS):
            p = pred[k * n:(k + 1) * n].tolist()
            rows.append((f"{deg} deg", shown[k * n:(k + 1) * n],
                         [f"pred {ROTATIONS[q]}" + (" ok" if q == k else " x") for q in p]))
        return rows


def pretrain_callbacks(cfg: TrainConfig, meta: Mapping[str, Any], eval_loader: Loader, out: Path,
                       weights: nn.Module, console: Any) -> list[Callback]:
    """The figure and encoder-file callbacks of a pre-training run."""
    return [Figures(cfg, meta, eval_loader, out, weights, console.warn), EncoderFile(out, weights, meta)]
