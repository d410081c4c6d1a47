"""Experiment trackers: `convscope train --log tensorboard,csv,wandb,mlflow`, fed from the epoch records that
metrics.jsonl holds.

`Trackers` is a loop callback placed after `Metrics` (callbacks.py). At each epoch's end it hands the record's
numbers (losses, scores, learning rate, images/s, epoch time) to every tracker named, with the epoch as the step;
at the run's end, the curves (the curves.png that Metrics drew) and the confusion matrix as images. `csv` is
summary.csv, one row per epoch as timm writes it (epoch, train_loss, eval_loss, eval_<score>..., lr), rewritten
atomically from the run's checkpointed history, so a resumed run continues it without repeating a row; TensorBoard
(torch.utils.tensorboard, in `out`/tensorboard) purges the epochs a resume repeats. wandb and mlflow are imported
only when named; `check_trackers` names a missing one's extra in one line before the run starts.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..extras import available
from ..files import atomic_write_text
from .callbacks import Evaluation, Metrics
from .loop import Callback, Loop

#: tracker -> (the module it imports, the convscope extra that installs it)
TRACKER_EXTRAS = {"tensorboard": ("tensorboard", "track"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
#: record keys that are counters, not measurements
COUNTERS = ("epoch", "step")
#: record keys of the training side (not evaluation scores)
TRAIN_KEYS = ("step", "lr", "train_loss", "train_img_per_s", "epoch_time_s")


def check_trackers(names: Sequence[str]) -> None:
    """ValueError (one line naming the extra to install) when a tracker in `names` is not installed."""
    for name in names:
        if name in TRACKER_EXTRAS:
            module, extra = TRACKER_EXTRAS[name]
            if not available(module):
                raise ValueError(f"--log {name} needs {module}, which is not installed: "
                                 f"pip install 'convscope[{extra}]'")


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an epoch's record that a tracker plots: all but the epoch and step counters."""
    return {k: float(v) for k, v in record.items()
            if k not in COUNTERS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def summary_columns(history: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """summary.csv's columns (header -> record key), as timm's summary.csv orders them: epoch, train_loss,
    eval_loss, the evaluation scores (eval_<key>, in the order the records hold them), lr."""
    keys = list(dict.fromkeys(k for r in history for k in r))
    scores = [k for k in keys if k not in (*COUNTERS, *TRAIN_KEYS, "eval_loss")]
    columns = {"epoch": "epoch", "train_loss": "train_loss", "eval_loss": "eval_loss"}
    columns.update({(k if "eval_" in k else f"eval_{k}"): k for k in scores})
    columns["lr"] = "lr"
    return columns


def write_summary(path: str | Path, history: Sequence[Mapping[str, Any]]) -> None:
    """summary.csv: a header and one row per epoch of `history` (an epoch without evaluation leaves its score
    cells empty), written atomically."""
    columns = summary_columns(history)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in history:
        writer.writerow(["" if r.get(k) is None else r[k] for k in columns.values()])
    atomic_write_text(path, buf.getvalue())


def confusion_image(matrix: Sequence[Sequence[int]], cell: int = 16) -> np.ndarray:
    """The confusion matrix (rows: true class, columns: predicted) as an RGB image (H, W, 3) uint8, each row
    normalised to its class's count: white 0, black every image of the class; `cell` pixels per entry."""
    m = np.asarray(matrix, dtype=np.float64)
    frac = m / np.maximum(m.sum(1, keepdims=True), 1)
    gray = np.round(255 * (1 - frac)).astype(np.uint8)
    gray = np.kron(gray, np.ones((cell, cell), dtype=np.uint8))
    return np.repeat(gray[:, :, None], 3, axis=2)


class _TensorBoard:
    """torch.utils.tensorboard's SummaryWriter in `out`/tensorboard."""

    def __init__(self, out: Path, config: Mapping[str, Any], purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)
        self.writer.add_text("config", "    " + json.dumps(config, indent=1).replace("\n", "\n    "))

    def log(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, img, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """A Weights & Biases run in `out` with the run's settings as its config."""

    def __init__(self, out: Path, config: Mapping[str, Any], purge_step: int | None) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(dir=str(out), config=dict(config))

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(img)}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    """An MLflow run (the tracking URI mlflow is set to) with the run's settings as its parameters."""

    def __init__(self, out: Path, config: Mapping[str, Any], purge_step: int | None) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run()
        mlflow.log_params({k: json.dumps(v) for k, v in config.items()})

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.mlflow.log_metrics(dict(values), step=step)

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        self.mlflow.log_image(img, f"{tag}.png")

    def close(self) -> None:
        self.mlflow.end_run()


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _MLflow}


class Trackers(Callback):
    """Feeds the trackers `names` (TRACKERS) from the epoch records of `metrics` (placed after it) and, at the
    end, the curves and the evaluation's confusion matrix as images; rank 0 only. Keeps no state: summary.csv is
    rewritten from the metrics history, which the checkpoint holds."""

    name = "trackers"

    def __init__(self, out: str | Path, names: Sequence[str], metrics: Metrics, evaluation: Evaluation,
                 config: Mapping[str, Any]) -> None:
        self.out, self.names, self.metrics, self.evaluation = Path(out), tuple(names), metrics, evaluation
        self.config = json.loads(json.dumps(dict(config)))
        self.backends: list[Any] = []
        self.fed = False   # an epoch was logged in this process (a resume after the last epoch logs nothing again)

    def on_fit_start(self, loop: Loop) -> None:
        if loop.dist.is_main:
            purge = loop.epoch + 1 if loop.resumed_from is not None else None   # drop epochs the resume repeats
            self.backends = [BACKENDS[n](self.out, self.config, purge) for n in self.names if n in BACKENDS]

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        if not loop.dist.is_main:
            return
        self.fed = True
        for backend in self.backends:
            backend.log(scalars(record), record["epoch"])
        if "csv" in self.names:
            write_summary(self.out / "summary.csv", self.metrics.history)

    def on_fit_end(self, loop: Loop) -> None:
        if not (loop.dist.is_main and self.fed):
            self._close()
            return
        images = {}
        if (self.out / "curves.png").is_file() and available("PIL"):
            from PIL import Image

            with Image.open(self.out / "curves.png") as im:
                images["curves"] = np.asarray(im.convert("RGB"))
        confusion = (self.evaluation.final or {}).get("confusion")
        if confusion is not None:
            images["confusion_matrix"] = confusion_image(confusion)
        for backend in self.backends:
            for tag, img in images.items():
                backend.image(tag, img, loop.epochs)
        self._close()

    def on_exception(self, loop: Loop, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []
