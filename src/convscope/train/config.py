"""The training run's settings: the TrainConfig (its command-line form, `convscope train`, is in
`convscope.cli.train`), and reading back the one a run directory was started with."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..extras import available
from ..files import atomic_write_json, atomic_write_text, read_json
from ..limits import MAX_SIDE, MAX_THREADS

# Settings that do not change what a run computes; the rest must match when a run is resumed.
NON_SEMANTIC = frozenset({"out", "resume", "workers", "quiet", "progress", "threads", "dist_timeout",
                          "checkpoint_every", "keep_last", "eval_batch_size", "check_images", "prefetch", "log"})

#: The tasks `convscope train --task` trains.
TASKS = ("classification", "segmentation", "sr")
#: The self-supervised pre-training tasks `convscope pretrain --method` trains (train/pretraining.py).
PRETRAIN_TASKS = ("rotnet", "spark", "pixpro")
#: The experiment trackers `--log` feeds (train/trackers.py); csv is summary.csv, the others need their extra.
TRACKERS = ("tensorboard", "csv", "wandb", "mlflow")
#: Settings only classification uses, with their defaults: a dense task refuses any other value.
CLASSIFICATION_ONLY = dict(mixup=0.0, cutmix=0.0, randaug_ops=0, msd_samples=0, scale=None, ratio=None,
                           init_from=None, pretrained=None, layer_decay=None, head_lr_scale=1.0)


@dataclass
class TrainConfig:
    """Everything a run needs. `batch_size` is per process and per micro-step: the optimizer sees
    batch_size x accum_steps x world_size images per step."""

    model: str
    data: str = "fashion-mnist"
    task: str = "classification"         # or "segmentation" (model = backbone, with `head`) or "sr" (`sr_scale`)
    head: str = "upernet"                # segmentation: the decode head (convscope.heads.HEADS)
    sr_scale: int = 2                    # sr: the upscaling factor
    mask_ratio: float = 0.6              # spark: the share of the deepest map's cells masked
    ignore_labels: bool = False          # pre-training: read the data without labels (pretraining.py)
    out: str = "runs/train"
    # schedule and optimizer
    epochs: int = 10
    batch_size: int | None = None        # None: data-aware (pipeline.resolve_defaults)
    lr: float | None = None
    min_lr: float = 1e-6
    warmup_epochs: float | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None
    accum_steps: int = 1
    ema_decay: float = 0.0
    ema_warmup: bool = True
    # model
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_path: float | None = None
    drop_rate: float | None = None
    msd_samples: int = 0
    msd_drop: float = 0.5
    input_size: int | None = None
    in_chans: int | None = None
    init_from: str | None = None        # weights to start from: a pruned model (save_pruned) or a run's weights
    pretrained: str | None = None       # released weights to fine-tune: NAME[.TAG], hf-hub:org/repo, a URL or a file
    layer_decay: float | None = None    # layer-wise lr decay: lr x layer_decay ** (last layer - layer)
    head_lr_scale: float = 1.0          # the classifier head's lr multiplier
    # data and augmentation
    data_limit: int | None = None
    eval_limit: int | None = None
    val_fraction: float = 0.1
    crop_pct: float | None = None
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    hflip: float = 0.5
    randaug_ops: int = 0
    randaug_magnitude: float = 9
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    on_error: str = "skip"
    check_images: str = "auto"
    synthetic_size: int = 512
    synthetic_classes: int = 4
    synthetic_image_size: int = 32
    # execution
    device: str = "auto"
    amp: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False               # under torchrun: BatchNorm statistics over every rank's batch
    workers: int = 0
    prefetch: int = 2
    threads: int | None = None
    seed: int = 0
    eval_batch_size: int | None = None
    eval_every: int = 1
    checkpoint_every: int = 0
    keep_last: int = 2
    resume: bool | str = False          # True: continue the run in out; "auto": when it has a checkpoint
    quiet: bool = False
    progress: str = "auto"
    dist_timeout: float = 300.0
    time_budget: float | None = None   # seconds for the whole run: the epochs are fitted to the measured speed
    log: tuple[str, ...] = ()          # experiment trackers fed from the epoch records (TRACKERS)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size is None or self.batch_size >= 1, f"batch size must be >= 1; got {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"lr must be > 0; got {self.lr}"),
            (self.min_lr >= 0 and (self.lr is None or self.min_lr <= self.lr),
             f"min_lr must be in [0, lr]; got {self.min_lr}"),
            (self.warmup_epochs is None or self.warmup_epochs >= 0,
             f"warmup_epochs must be >= 0; got {self.warmup_epochs}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0; got {self.weight_decay}"),
            (self.accum_steps >= 1, f"accum_steps must be >= 1; got {self.accum_steps}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1); got {self.ema_decay}"),
            (self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be > 0; got {self.clip_grad}"),
            (self.msd_samples >= 0, f"msd_samples must be >= 0; got {self.msd_samples}"),
            (0 <= self.msd_drop < 1, f"msd_drop must be in [0, 1); got {self.msd_drop}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1); got {self.label_smoothing}"),
            (self.amp in ("fp32", "bf16"), f"amp must be 'fp32' or 'bf16'; got {self.amp!r}"),
            (self.progress in ("auto", "bar", "plain", "none"),
             f"progress must be auto, bar, plain or none; got {self.progress!r}"),
            (self.on_error in ("skip", "raise"), f"on_error must be 'skip' or 'raise'; got {self.on_error!r}"),
            (self.keep_last >= 1, f"keep_last must be >= 1; got {self.keep_last}"),
            (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0; got {self.checkpoint_every}"),
            (self.eval_every >= 1, f"eval_every must be >= 1; got {self.eval_every}"),
            (self.input_size is None or 1 <= self.input_size <= MAX_SIDE,
             f"input size must be in [1, {MAX_SIDE}]; got {self.input_size}"),
            (self.in_chans in (None, 1, 3), f"in_chans must be 1 or 3; got {self.in_chans}"),
            (self.threads is None or 1 <= self.threads <= MAX_THREADS,
             f"threads must be in [1, {MAX_THREADS}]; got {self.threads}"),
            (self.workers >= 0, f"workers must be >= 0; got {self.workers}"),
            (self.prefetch >= 1, f"prefetch must be >= 1; got {self.prefetch}"),
            (self.drop_path is None or 0 <= self.drop_path < 1, f"drop_path must be in [0, 1); got {self.drop_path}"),
            (self.drop_rate is None or 0 <= self.drop_rate < 1, f"drop_rate must be in [0, 1); got {self.drop_rate}"),
            (self.data_limit is None or self.data_limit >= 1, f"data_limit must be >= 1; got {self.data_limit}"),
            (self.eval_limit is None or self.eval_limit >= 1, f"eval_limit must be >= 1; got {self.eval_limit}"),
            (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1); got {self.val_fraction}"),
            (self.crop_pct is None or 0 < self.crop_pct <= 1, f"crop_pct must be in (0, 1]; got {self.crop_pct}"),
            (self.scale is None or 0 < self.scale[0] <= self.scale[1] <= 1,
             f"scale must be 0 < min <= max <= 1; got {self.scale}"),
            (self.ratio is None or 0 < self.ratio[0] <= self.ratio[1],
             f"ratio must be 0 < min <= max; got {self.ratio}"),
            (0 <= self.hflip <= 1, f"hflip must be in [0, 1]; got {self.hflip}"),
            (self.randaug_ops >= 0, f"randaug_ops must be >= 0; got {self.randaug_ops}"),
            (0 <= self.randaug_magnitude <= 30, f"randaug_magnitude must be in [0, 30]; got {self.randaug_magnitude}"),
            (self.mixup >= 0, f"mixup must be >= 0; got {self.mixup}"),
            (self.cutmix >= 0, f"cutmix must be >= 0; got {self.cutmix}"),
            (0 <= self.mix_prob <= 1, f"mix_prob must be in [0, 1]; got {self.mix_prob}"),
            (0 <= self.mix_switch_prob <= 1, f"mix_switch_prob must be in [0, 1]; got {self.mix_switch_prob}"),
            (self.synthetic_size >= 2, f"synthetic_size must be >= 2; got {self.synthetic_size}"),
            (self.synthetic_classes >= 2, f"synthetic_classes must be >= 2; got {self.synthetic_classes}"),
            (self.synthetic_image_size >= 1, f"synthetic_image_size must be >= 1; got {self.synthetic_image_size}"),
            (self.eval_batch_size is None or self.eval_batch_size >= 1,
             f"eval_batch_size must be >= 1; got {self.eval_batch_size}"),
            (self.dist_timeout > 0, f"dist_timeout must be > 0; got {self.dist_timeout}"),
            (all(0 <= b < 1 for b in self.betas), f"betas must be in [0, 1); got {self.betas}"),
            (self.time_budget is None or self.time_budget > 0, f"time budget must be > 0; got {self.time_budget}"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1,
             f"layer_decay must be in (0, 1]; got {self.layer_decay}"),
            (self.head_lr_scale > 0, f"head_lr_scale must be > 0; got {self.head_lr_scale}"),
            (self.pretrained is None or self.init_from is None,
             "pretrained and init_from both give starting weights: pass one of them"),
            (set(self.log) <= set(TRACKERS), f"log must name trackers among {', '.join(TRACKERS)}; got {self.log}"),
        ]
        import math
        for name in ("lr", "min_lr", "warmup_epochs", "weight_decay", "clip_grad", "drop_path", "drop_rate",
                     "msd_drop", "label_smoothing", "val_fraction", "crop_pct", "hflip", "randaug_magnitude",
                     "mixup", "cutmix", "mix_prob", "mix_switch_prob", "ema_decay", "dist_timeout", "time_budget",
                     "layer_decay", "head_lr_scale", "mask_ratio"):
            v = getattr(self, name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v}")
        for name in ("scale", "ratio", "betas"):
            if getattr(self, name) is not None and not all(math.isfinite(v) for v in getattr(self, name)):
                raise ValueError(f"{name} must be finite numbers; got {getattr(self, name)}")
        if self.lr is not None and self.lr > 10:
            raise ValueError(f"lr must be <= 10 (AdamW's peak learning rate; typical: 1e-4 to 1e-2); got {self.lr}")
        for ok, msg in checks + self._task_checks():
            if not ok:
                raise ValueError(msg)
        self.scale, self.ratio = (None if v is None else tuple(v) for v in (self.scale, self.ratio))
        self.betas, self.log = tuple(self.betas), tuple(self.log)

    def _task_checks(self) -> list[tuple[bool, str]]:
        """The task, and the classification-only settings a dense task refuses."""
        tasks = TASKS + PRETRAIN_TASKS
        checks = [(self.task in tasks, f"task must be one of {', '.join(tasks)}; got {self.task!r}"),
                  (self.sr_scale in (2, 3, 4), f"sr_scale must be 2, 3 or 4; got {self.sr_scale}"),
                  (0 < self.mask_ratio < 1, f"mask_ratio must be in (0, 1); got {self.mask_ratio}"),
                  (not self.ignore_labels or self.task in PRETRAIN_TASKS,
                   f"ignore_labels applies to pre-training ({', '.join(PRETRAIN_TASKS)}); got task {self.task}")]
        if self.task != "classification":
            given = [f"--{k.replace('_', '-')}" for k, default in CLASSIFICATION_ONLY.items()
                     if getattr(self, k) != default]
            checks.append((not given, f"{', '.join(given)} only apply to --task classification; got --task "
                                      f"{self.task}"))
        return checks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}")
        return cls(**d)

    def semantic_diff(self, other: TrainConfig) -> list[str]:
        """Settings that differ and change what the run computes (checked on resume)."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {b[k]!r} -> {a[k]!r}" for k in a
                if k not in NON_SEMANTIC and json.dumps(a[k]) != json.dumps(b[k])]


def write_run_config(out: str | Path, cfg: TrainConfig) -> list[Path]:
    """The resolved settings of a run as `out`/config.json and, when PyYAML is installed, `out`/config.yaml (the
    same dict, each written atomically); either file given to `convscope train --config` repeats the run. Returns
    the files written."""
    settings = json.loads(json.dumps(cfg.to_dict()))   # tuples as lists: the one form both files hold
    written = [atomic_write_json(Path(out) / "config.json", settings)]
    if available("yaml"):
        import yaml

        written.append(atomic_write_text(Path(out) / "config.yaml", yaml.safe_dump(settings, sort_keys=False)))
    return written


def load_run_config(out: str | Path) -> TrainConfig:
    """The TrainConfig a run directory was started with."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {out}")
    d = read_json(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object of training settings")
    try:
        return TrainConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
