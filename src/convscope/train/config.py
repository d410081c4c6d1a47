"""The training run's settings: the TrainConfig, its command-line form (`convscope train`), and reading back
the one a run directory was started with."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..files import read_json

# Settings that do not change what a run computes; the rest must match when a run is resumed.
NON_SEMANTIC = frozenset({"out", "resume", "workers", "quiet", "progress", "threads", "dist_timeout",
                          "checkpoint_every", "keep_last", "eval_batch_size", "check_images", "prefetch"})


@dataclass
class TrainConfig:
    """Everything a run needs. `batch_size` is per process and per micro-step: the optimizer sees
    batch_size x accum_steps x world_size images per step."""

    model: str
    data: str = "fashion-mnist"
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
    check_images: str = "header"
    synthetic_size: int = 512
    synthetic_classes: int = 4
    synthetic_image_size: int = 32
    # execution
    device: str = "auto"
    amp: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    prefetch: int = 2
    threads: int | None = None
    seed: int = 0
    eval_batch_size: int | None = None
    eval_every: int = 1
    checkpoint_every: int = 0
    keep_last: int = 2
    resume: bool = False
    quiet: bool = False
    progress: str = "auto"
    dist_timeout: float = 300.0
    time_budget: float | None = None   # seconds for the whole run: the epochs are fitted to the measured speed

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
            (self.input_size is None or 1 <= self.input_size <= 4096,
             f"input size must be in [1, 4096]; got {self.input_size}"),
            (self.in_chans in (None, 1, 3), f"in_chans must be 1 or 3; got {self.in_chans}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1; got {self.threads}"),
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
        ]
        import math
        for name in ("lr", "min_lr", "warmup_epochs", "weight_decay", "clip_grad", "drop_path", "drop_rate",
                     "msd_drop", "label_smoothing", "val_fraction", "crop_pct", "hflip", "randaug_magnitude",
                     "mixup", "cutmix", "mix_prob", "mix_switch_prob", "ema_decay", "dist_timeout", "time_budget"):
            v = getattr(self, name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v}")
        for name in ("scale", "ratio", "betas"):
            if getattr(self, name) is not None and not all(math.isfinite(v) for v in getattr(self, name)):
                raise ValueError(f"{name} must be finite numbers; got {getattr(self, name)}")
        if self.lr is not None and self.lr > 10:
            raise ValueError(f"lr must be <= 10 (AdamW's peak learning rate; typical: 1e-4 to 1e-2); got {self.lr}")
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.scale = None if self.scale is None else tuple(self.scale)
        self.ratio = None if self.ratio is None else tuple(self.ratio)
        self.betas = tuple(self.betas)

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


def _floats(n: int):
    def parse(s: str) -> tuple[float, ...]:
        try:
            vals = tuple(float(v) for v in s.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers; got {s!r}") from None
        if len(vals) != n:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers; got {s!r}")
        return vals
    return parse


def _duration(s: str) -> float:
    from .budget import parse_duration

    try:
        return parse_duration(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _json_dict(s: str) -> dict:
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object; got {s!r} ({e})") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object; got {s!r}")
    return d


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The `convscope train` options; every one maps to the TrainConfig field of the same name."""
    d = TrainConfig(model="-")
    g = p.add_argument_group("run")
    g.add_argument("--model", required=True, help="registered model name (convscope list)")
    g.add_argument("--data", default=d.data, help="fashion-mnist, synthetic, or an image-folder directory "
                   "(root/<class>/*.jpg, or root/train and root/val)")
    g.add_argument("--out", default=d.out, help="run directory (checkpoints, metrics.jsonl, curves.png)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=None, help="per process and micro-step (default: 128, or 64 "
                   "for fewer than 20,000 training images)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW; default: 1e-3 x batch "
                   "size / 128, x4 below 20,000 training images)")
    g.add_argument("--min-lr", type=float, default=d.min_lr, help="cosine schedule floor")
    g.add_argument("--warmup-epochs", type=float, default=None, help="default: 1, or 0.5 for small data sets")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="not applied to 1-D parameters "
                   "(norms, biases, layer scales)")
    g.add_argument("--clip-grad", type=float, default=None, help="max gradient norm")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps, help="gradient accumulation micro-steps")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA of weights (0: off)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g = p.add_argument_group("model")
    g.add_argument("--model-kwargs", type=_json_dict, default={}, help='JSON constructor overrides, e.g. '
                   '\'{"depths": [1, 1, 1, 1]}\'')
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth (default: the ModelCard's)")
    g.add_argument("--drop-rate", type=float, default=None, help="head dropout")
    g.add_argument("--msd-samples", type=int, default=d.msd_samples, help="multi-sample dropout head: samples "
                   "(0: off)")
    g.add_argument("--msd-drop", type=float, default=d.msd_drop)
    g.add_argument("--input-size", type=int, default=None, help="model input side (default: the data's size, "
                   "raised to the model's minimum and, for an image folder, to twice its last stage's stride; at "
                   "most the model card's)")
    g.add_argument("--in-chans", type=int, default=None, help="1 (grayscale) or 3; default: the data's")
    g.add_argument("--init-from", default=None, metavar="WEIGHTS.safetensors",
                   help="start from these weights instead of a random init: a pruned model written by "
                        "convscope.deploy.prune.save_pruned (the model takes its pruned widths: fine-tuning after "
                        "pruning) or a weights file written by convscope train for the same model and classes")
    g = p.add_argument_group("data and augmentation")
    g.add_argument("--data-limit", type=int, default=None, help="use only the first N training images")
    g.add_argument("--eval-limit", type=int, default=None, help="evaluate on only the first N images")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="held out of a single image folder")
    g.add_argument("--crop-pct", type=float, default=None)
    g.add_argument("--scale", type=_floats(2), default=None, help="random resized crop area range, e.g. 0.08,1 "
                   "(default: data-aware; 1,1 = whole images for images of 64 pixels or less)")
    g.add_argument("--ratio", type=_floats(2), default=None, help="random resized crop aspect range (default: "
                   "1,1 with whole images, else 0.75,1.333)")
    g.add_argument("--hflip", type=float, default=d.hflip)
    g.add_argument("--randaug-ops", type=int, default=d.randaug_ops, help="RandAugment-lite ops per image (0: off)")
    g.add_argument("--randaug-magnitude", type=float, default=d.randaug_magnitude)
    g.add_argument("--mixup", type=float, default=d.mixup, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=d.cutmix, help="CutMix alpha (0: off)")
    g.add_argument("--mix-prob", type=float, default=d.mix_prob)
    g.add_argument("--mix-switch-prob", type=float, default=d.mix_switch_prob)
    g.add_argument("--on-error", choices=("skip", "raise"), default=d.on_error, help="unreadable images")
    g.add_argument("--check-images", choices=("none", "header", "decode"), default=d.check_images)
    g.add_argument("--synthetic-size", type=int, default=d.synthetic_size)
    g.add_argument("--synthetic-classes", type=int, default=d.synthetic_classes)
    g.add_argument("--synthetic-image-size", type=int, default=d.synthetic_image_size)
    g = p.add_argument_group("execution")
    g.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", choices=("fp32", "bf16"), default=d.amp, help="autocast dtype")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--workers", type=int, default=d.workers, help="data loader worker processes")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    g.add_argument("--eval-batch-size", type=int, default=None)
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N epochs (and at the end)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="also checkpoint every N optimizer steps (0: only at epoch ends)")
    g.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
                   help="finish the whole run within this time (e.g. 9m, 540s, 1h): the epochs (at most --epochs) "
                        "are fitted to the speed measured in the first steps")
    g.add_argument("--keep-last", type=int, default=d.keep_last, help="checkpoints to keep")
    g.add_argument("--quiet", action="store_true", help="print only the final summary")
    g.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default=d.progress,
                   help="auto: progress bars on a terminal, one line per epoch otherwise")
    g.add_argument("--dist-timeout", type=float, default=d.dist_timeout, help="seconds a collective may wait")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


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
