"""The training engine: `train(TrainConfig)` runs a whole training run, and reads top to bottom like one.

The recipe is the one the ConvNeXt / MetaFormer papers train with, scaled down: AdamW with linear warm-up and a
cosine schedule per optimizer step, weight decay on matrices and kernels only, stochastic depth at the
ModelCard's rate, label smoothing, Mixup/CutMix and RandAugment when asked, gradient clipping, an EMA of the
weights, bf16 autocast, channels-last, gradient accumulation, torch.compile, and a multi-sample dropout head.

Reproducibility: every batch (its images, augmentation and mixing) is a function of (seed, epoch, step, rank);
the model's own randomness (stochastic depth, dropout) comes from the global torch generator, whose state is
checkpointed with everything else. Resuming from a checkpoint therefore continues bit for bit where the run was.
"""
from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..files import atomic_write_json, read_json
from ..models import create_model, model_card
from ..utils import set_threads
from .checkpoint import CheckpointManager, rng_state_json, save_model_file, set_rng_state_json
from .config import TrainConfig
from .datasets import (FASHION_MNIST_CLASSES, ImageFolder, IndexSubset, fashion_mnist, is_idx_dir, repeat_channels,
                       split_indices, synthetic)
from .distributed import (DistInfo, all_gather_tensors, all_reduce_sum, barrier, destroy_distributed,
                          init_distributed)
from .loaders import Loader
from .mixing import MixupCutMix, classification_loss
from .report import Console, PhaseTimer, format_duration, plot_curves, write_metrics
from .transforms import EvalTransform, RandAugmentLite, TrainTransform


# -- optimizer pieces ---------------------------------------------------------------------------------------------
def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on parameters with 2+ dimensions (conv kernels, linear weights); none on
    1-D ones (norm weights and biases, biases, layer scales, GRN's gamma/beta) nor on a model's
    `no_weight_decay()` names. Frozen parameters are left out."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


class WarmupCosine:
    """Learning rate per optimizer step s (0-based): linear warm-up lr * (s + 1) / warmup for s < warmup, then
    min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2 with t = (s - warmup) / (total - warmup) going 0 -> 1."""

    def __init__(self, optimizer: torch.optim.Optimizer | None, lr: float, min_lr: float, warmup_steps: int,
                 total_steps: int) -> None:
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps, total >= 1; got {warmup_steps}, {total_steps}")
        self.optimizer, self.lr, self.min_lr = optimizer, lr, min_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.last_step = -1

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def step(self, step: int) -> float:
        """Set the learning rate of optimizer step `step` in every parameter group."""
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        return dict(lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                    last_step=self.last_step)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("lr", "min_lr", "warmup_steps", "total_steps"):
            if state[k] != getattr(self, k):
                raise ValueError(f"schedule {k} differs from the checkpoint's: {getattr(self, k)} vs {state[k]}")
        self.last_step = state["last_step"]


class ModelEma:
    """Exponential moving average of the weights: ema = d * ema + (1 - d) * w after every optimizer step, with
    d = min(decay, (1 + step) / (10 + step)) when `warmup` (so that short runs are not dominated by the init).
    Non-float buffers are copied."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_f, cur_f = [], []
        for e, c in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                ema_f.append(e)
                cur_f.append(c.detach())
            else:
                e.copy_(c)
        torch._foreach_lerp_(ema_f, cur_f, 1.0 - d)


class TrainModule(nn.Module):
    """What the optimizer trains (and DDP / torch.compile wrap): the model, with an optional multi-sample dropout
    head (Inoue, arXiv 1905.09788): in training, `samples` dropout masks on the pooled features, each through the
    classifier, giving logits (samples, B, classes) whose losses are averaged."""

    def __init__(self, model: nn.Module, msd_samples: int = 0, msd_drop: float = 0.5) -> None:
        super().__init__()
        self.model, self.msd_samples, self.msd_drop = model, msd_samples, msd_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.msd_samples == 0 or not self.training:
            return self.model(x)
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        fc = self.model.get_classifier()
        return torch.stack([fc(F.dropout(feats, self.msd_drop, True)) for _ in range(self.msd_samples)])


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Classification loss; multi-sample logits (K, B, C) give the mean of the K losses."""
    if logits.ndim == 3:
        return torch.stack([classification_loss(lg, targets, smoothing) for lg in logits]).mean()
    return classification_loss(logits, targets, smoothing)


# -- evaluation ---------------------------------------------------------------------------------------------------
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


# -- data ----------------------------------------------------------------------------------------------------------
@dataclass
class DataSpec:
    """The datasets of a run and how to feed them to the model."""

    train: Any
    eval: Any
    classes: tuple[str, ...]
    in_chans: int
    input_size: tuple[int, int]
    load_size: tuple[int, int]
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


def choose_input_size(model: nn.Module, native: Sequence[int], requested: int | None) -> tuple[int, int]:
    """The model input: `requested`, or the data's native size raised to the model's minimum; a model with a
    fixed input size takes only that."""
    fixed = getattr(model, "fixed_input_size", None)
    name = getattr(model, "model_name", type(model).__name__)
    if fixed is not None:
        if requested is not None and (requested, requested) != tuple(fixed):
            raise ValueError(f"{name} only takes {fixed[0]}x{fixed[1]} inputs; got --input-size {requested}")
        return tuple(fixed)
    mh, mw = getattr(model, "min_input_size", (1, 1))
    if requested is not None:
        if requested < mh or requested < mw:
            raise ValueError(f"{name} needs inputs of at least {mh}x{mw}; got --input-size {requested}")
        return requested, requested
    return max(int(native[0]), mh), max(int(native[1]), mw)


def build_data(cfg: TrainConfig, probe: nn.Module, console: Console | None = None) -> DataSpec:
    """Datasets for `cfg.data`: 'fashion-mnist', 'synthetic', a directory of Fashion-MNIST idx files, or an image
    folder (root/<class>/..., or root/train + root/val|test)."""
    card = model_card(cfg.model)
    path = Path(cfg.data)
    if cfg.data == "fashion-mnist" or (path.is_dir() and is_idx_dir(path)):
        root = None if cfg.data == "fashion-mnist" else path
        train, test = fashion_mnist(root, "train"), fashion_mnist(root, "test")
        mean, std = train.channel_stats()
        in_chans = cfg.in_chans or 1
        train, test = repeat_channels(train, in_chans), repeat_channels(test, in_chans)
        mean, std = mean * in_chans, std * in_chans
        classes, crop_pct, native, input_size = FASHION_MNIST_CLASSES, cfg.crop_pct or 1.0, train.image_size, None
        desc = f"Fashion-MNIST ({root or 'default location'})"
    elif cfg.data == "synthetic":
        s = cfg.synthetic_image_size
        kw = dict(num_classes=cfg.synthetic_classes, size=s, in_chans=cfg.in_chans or 3, seed=cfg.seed)
        train = synthetic(cfg.synthetic_size, split="train", **kw)
        test = synthetic(max(cfg.synthetic_size // 4, 2), split="test", **kw)
        mean, std = train.channel_stats()
        classes, crop_pct, native, in_chans = train.classes, cfg.crop_pct or 1.0, (s, s), train.in_chans
        input_size = None
        desc = f"synthetic ({cfg.synthetic_size} images, {cfg.synthetic_classes} classes)"
    else:
        if not path.is_dir():
            raise FileNotFoundError(f"--data {cfg.data!r} is neither 'fashion-mnist', 'synthetic' nor a directory")
        in_chans = cfg.in_chans or 3
        crop_pct = cfg.crop_pct or card.crop_pct
        input_size = choose_input_size(probe, card.input_size[1:], cfg.input_size)
        load = max(1, round(max(input_size) / crop_pct))
        warn = console.warn if console is not None else None
        kw = dict(load_size=load, mode="RGB" if in_chans == 3 else "L", on_error=cfg.on_error,
                  check=cfg.check_images, report=warn)
        held_out = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
        if (path / "train").is_dir():
            train = ImageFolder(path / "train", **kw)
            if held_out is not None:
                test = ImageFolder(held_out, classes=train.classes, **kw)
            else:
                tr, va = split_indices(len(train), cfg.val_fraction, cfg.seed)
                train, test = IndexSubset(train, tr), IndexSubset(train, va)
        else:
            full = ImageFolder(path, **kw)
            tr, va = split_indices(len(full), cfg.val_fraction, cfg.seed)
            train, test = IndexSubset(full, tr), IndexSubset(full, va)
        mean = card.mean if in_chans == 3 else (round(sum(card.mean) / 3, 4),)
        std = card.std if in_chans == 3 else (round(sum(card.std) / 3, 4),)
        classes, native = train.classes, (load, load)
        desc = f"image folder {path} ({len(train)} train / {len(test)} eval images)"
    if cfg.data_limit is not None:
        train = train.subset(cfg.data_limit) if hasattr(train, "subset") else IndexSubset(train, range(cfg.data_limit))
    if cfg.eval_limit is not None:
        test = test.subset(cfg.eval_limit) if hasattr(test, "subset") else IndexSubset(test, range(cfg.eval_limit))
    if input_size is None:
        input_size = choose_input_size(probe, native, cfg.input_size)
    return DataSpec(train, test, tuple(classes), in_chans, input_size, tuple(native), crop_pct, tuple(mean),
                    tuple(std), desc)


def make_loaders(cfg: TrainConfig, spec: DataSpec, dist: DistInfo) -> tuple[Loader, Loader]:
    randaug = RandAugmentLite(cfg.randaug_ops, cfg.randaug_magnitude) if cfg.randaug_ops else None
    train_tf = TrainTransform(spec.input_size, spec.mean, spec.std, cfg.scale, cfg.ratio, cfg.hflip, randaug)
    eval_tf = EvalTransform(spec.input_size, spec.mean, spec.std, spec.crop_pct)
    mixer = MixupCutMix(len(spec.classes), cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.mix_switch_prob,
                        cfg.label_smoothing)
    pin = dist.device.type == "cuda"
    common = dict(seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, workers=cfg.workers, pin_memory=pin,
                  prefetch_factor=cfg.prefetch)
    train = Loader(spec.train, train_tf, cfg.batch_size, train=True, mixer=mixer if mixer.active else None, **common)
    evaluation = Loader(spec.eval, eval_tf, cfg.eval_batch_size or 2 * cfg.batch_size, train=False, **common)
    return train, evaluation


# -- the run ------------------------------------------------------------------------------------------------------
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


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def _order_digest(loader: Loader, epoch: int) -> str:
    """A fingerprint of this rank's sample order in `epoch` (checked on resume)."""
    sampler = loader.batch_sampler.sampler
    saved = sampler.epoch, sampler.start
    sampler.set_epoch(epoch, 0)
    digest = hashlib.sha1(np.asarray(list(iter(sampler)), dtype=np.int64).tobytes()).hexdigest()[:16]
    sampler.set_epoch(*saved)
    return digest


def _gather_rng(dist: DistInfo) -> dict[str, torch.Tensor]:
    """Every rank's torch (and CUDA) generator state, for rank 0 to checkpoint."""
    out = {}
    states = [("torch", torch.get_rng_state())]
    if dist.device.type == "cuda":
        states.append(("cuda", torch.cuda.get_rng_state(dist.device)))
    for name, st in states:
        gathered = all_gather_tensors(st.to(dist.device), dist)
        out.update({f"{name}.rank{r}": g.cpu() for r, g in enumerate(gathered)})
    return out


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; rank 0 writes everything under `cfg.out`."""
    t_start = time.perf_counter()
    dist = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        return _train(cfg, dist, t_start)
    finally:
        destroy_distributed()


def _train(cfg: TrainConfig, dist: DistInfo, t_start: float) -> TrainResult:
    set_threads(cfg.threads or None)   # 0, like None, leaves torch's thread count as it is
    device = dist.device
    out = Path(cfg.out)
    ckpts = CheckpointManager(out / "checkpoints", cfg.keep_last)
    if not cfg.resume and ckpts.latest() is not None:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume and ckpts.latest() is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpts.directory}")
    console = Console("none" if cfg.quiet else cfg.progress, enabled=dist.is_main)
    timer = PhaseTimer(device)

    # -- data, model ---------------------------------------------------------------------------------------------
    card = model_card(cfg.model)
    with timer("setup"):   # reading the data, building the model
        with torch.device("meta"):
            probe = create_model(cfg.model, **cfg.model_kwargs)
        spec = build_data(cfg, probe, console)
        train_loader, eval_loader = make_loaders(cfg, spec, dist)
        drop_path = card.drop_path_rate if cfg.drop_path is None else cfg.drop_path
        extra = {} if cfg.drop_rate is None else dict(drop_rate=cfg.drop_rate)
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=len(spec.classes), in_chans=spec.in_chans,
                             drop_path_rate=drop_path, **cfg.model_kwargs, **extra)
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = model.to(device, memory_format=memory_format)
    meta = dict(model=card.name, model_kwargs=cfg.model_kwargs, num_classes=len(spec.classes),
                in_chans=spec.in_chans, input_size=list(spec.input_size), load_size=list(spec.load_size),
                crop_pct=spec.crop_pct, mean=list(spec.mean), std=list(spec.std), class_names=list(spec.classes),
                data=cfg.data)

    # -- optimizer, schedule, EMA --------------------------------------------------------------------------------
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    steps_per_epoch = len(train_loader) // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch has {len(train_loader)} batches, fewer than --accum-steps {cfg.accum_steps}")
    total_steps = steps_per_epoch * cfg.epochs
    schedule = WarmupCosine(optimizer, cfg.lr, cfg.min_lr, min(round(cfg.warmup_epochs * steps_per_epoch),
                                                               total_steps), total_steps)
    ema = ModelEma(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    train_module: nn.Module = TrainModule(model, cfg.msd_samples, cfg.msd_drop)
    if dist.enabled:
        train_module = nn.parallel.DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == "cuda" else None)
    step_module = torch.compile(train_module) if cfg.compile else train_module

    # -- fresh start or resume -----------------------------------------------------------------------------------
    data_desc = dict(train_size=len(spec.train), world_size=dist.world_size, batch_size=cfg.batch_size,
                     accum_steps=cfg.accum_steps, steps_per_epoch=steps_per_epoch,
                     order="DistributedSampler permutation seeded by seed + epoch; batch transforms seeded by "
                           "(seed, epoch, step, rank)")
    history: list[dict[str, Any]] = []
    best = {"top1": -1.0, "epoch": None}
    start_epoch, start_step, global_step, resumed_from = 0, 0, 0, None
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    if cfg.resume:
        ck = ckpts.load()
        saved_cfg = TrainConfig.from_dict(ck.state["config"])
        diff = cfg.semantic_diff(saved_cfg)
        if diff:
            raise ValueError(f"--resume with settings that differ from the run in {out}: {'; '.join(diff)}")
        if ck.state["data"] != dict(data_desc, epoch_order=ck.state["data"]["epoch_order"]):
            raise ValueError(f"the data differs from the checkpoint's: {ck.state['data']} vs {data_desc}")
        model.load_state_dict(ck.model)
        if ema is not None:
            ema.module.load_state_dict(ck.ema)
        optimizer.load_state_dict(ck.optimizer)
        schedule.load_state_dict(ck.state["schedule"])
        start_epoch, start_step = ck.state["epoch"], ck.state["step_in_epoch"]
        global_step, history, best = ck.state["global_step"], ck.state["history"], ck.state["best"]
        loss_sum = torch.tensor(ck.state["epoch_loss_sum"], dtype=torch.float64, device=device)
        seen = ck.state["epoch_seen"]
        if start_epoch < cfg.epochs and ck.state["data"]["epoch_order"] != _order_digest(train_loader, start_epoch):
            raise ValueError("the training data order differs from the checkpoint's (did the dataset change?)")
        torch.set_rng_state(ck.rng[f"torch.rank{dist.rank}"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(ck.rng[f"cuda.rank{dist.rank}"], device)
        set_rng_state_json(ck.state["rng"])
        resumed_from = global_step
        console.log(f"resumed from {ck.path} (epoch {start_epoch + 1}, step {start_step}/{steps_per_epoch})")
    else:
        _seed_all(cfg.seed + dist.rank)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "config.json", cfg.to_dict())
    if dist.is_main:
        ckpts.clean_partial()

    def save_checkpoint(epoch: int, step_in_epoch: int) -> None:
        rng = _gather_rng(dist)   # a collective: every rank takes part
        if not dist.is_main:
            return
        with timer("checkpoint"):
            order = _order_digest(train_loader, epoch) if epoch < cfg.epochs else None
            state = dict(epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                         schedule=schedule.state_dict(), data=dict(data_desc, epoch_order=order),
                         epoch_loss_sum=float(loss_sum), epoch_seen=seen, history=history, best=best,
                         config=cfg.to_dict(), rng=rng_state_json())
            ckpts.save(global_step, model=model.state_dict(), optimizer=optimizer.state_dict(), state=state,
                       meta=dict(meta, epoch=epoch, step=global_step), rng=rng,
                       ema=ema.module.state_dict() if ema is not None else None)

    n_params = sum(p.numel() for p in model.parameters())
    console.log(f"{card.name}: {n_params / 1e6:.3f} M parameters, input {spec.in_chans}x{spec.input_size[0]}x"
                f"{spec.input_size[1]}, {len(spec.classes)} classes; {spec.description}; "
                f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs, global batch "
                f"{cfg.batch_size * cfg.accum_steps * dist.world_size}, {cfg.amp}, {device}"
                + (f", {dist.world_size} processes" if dist.enabled else ""))

    # -- the loop ------------------------------------------------------------------------------------------------
    console.start(total_steps, global_step)
    train_images = 0
    last_eval: dict[str, Any] = {}
    t_loop = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            train_loader.set_epoch(epoch, start_step * cfg.accum_steps)
            console.epoch_start(epoch, cfg.epochs, steps_per_epoch, start_step)
            t_epoch, epoch_images = time.perf_counter(), 0
            batches = iter(train_loader)
            for step in range(start_step, steps_per_epoch):
                lr = schedule.step(global_step)
                step_images = 0
                for micro in range(cfg.accum_steps):
                    with timer("data"):
                        x, targets = next(batches)
                        x = x.to(device, non_blocking=True, memory_format=memory_format)
                        targets = targets.to(device, non_blocking=True)
                    if x.shape[0] == 0:   # every file of this batch was unreadable (and skipped)
                        continue
                    sync = micro == cfg.accum_steps - 1 or not dist.enabled
                    with nullcontext() if sync else train_module.no_sync():
                        with timer("forward"):
                            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
                                logits = step_module(x)
                            loss = loss_fn(logits, targets, cfg.label_smoothing)
                        with timer("backward"):
                            (loss / cfg.accum_steps).backward()
                    loss_sum += loss.detach().double() * x.shape[0]
                    seen += x.shape[0]
                    step_images += x.shape[0]
                with timer("optimizer"):
                    if cfg.clip_grad is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(model, global_step)
                global_step += 1
                epoch_images += step_images
                console.step(step_images, lambda s=loss_sum, n=seen: float(s) / max(n, 1))
                if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                    save_checkpoint(epoch, step + 1)

            # -- end of epoch: evaluate, record, checkpoint ----------------------------------------------------------
            epoch_time = time.perf_counter() - t_epoch
            train_images += epoch_images
            total_seen = all_reduce_sum(torch.tensor([float(loss_sum), float(seen)], dtype=torch.float64,
                                                     device=device), dist).tolist()
            record = dict(epoch=epoch + 1, step=global_step, lr=lr,
                          train_loss=float(total_seen[0] / max(total_seen[1], 1)),
                          train_img_per_s=epoch_images * dist.world_size / max(epoch_time, 1e-9),
                          epoch_time_s=epoch_time)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                with timer("eval"):
                    last_eval = evaluate(model, eval_loader, len(spec.classes), device, cfg.amp, cfg.channels_last,
                                         dist)
                    record.update(top1=last_eval["top1"], top5=last_eval["top5"], eval_loss=last_eval["loss"])
                    if ema is not None:
                        last_eval = evaluate(ema.module, eval_loader, len(spec.classes), device, cfg.amp,
                                             cfg.channels_last, dist)
                        record.update(ema_top1=last_eval["top1"], ema_top5=last_eval["top5"],
                                      ema_eval_loss=last_eval["loss"])
                if last_eval["top1"] > best["top1"]:
                    best = dict(top1=last_eval["top1"], top5=last_eval["top5"], epoch=epoch + 1)
                    if dist.is_main:
                        weights = ema.module if ema is not None else model
                        save_model_file(out / "best.safetensors", weights.state_dict(),
                                        dict(meta, weights="ema" if ema else "model", epoch=epoch + 1,
                                             step=global_step, top1=last_eval["top1"], top5=last_eval["top5"]))
            history.append(record)
            loss_sum, seen, start_step = torch.zeros((), dtype=torch.float64, device=device), 0, 0
            save_checkpoint(epoch + 1, 0)
            if dist.is_main:
                write_metrics(out / "metrics.jsonl", history)
                plot_curves(out / "curves.png", history, f"{card.name} on {spec.description}")
            elapsed = time.perf_counter() - t_loop
            done = global_step - (resumed_from or 0)
            eta = elapsed / max(done, 1) * (total_steps - global_step)
            console.epoch_end(record, eta if global_step < total_steps else None)
    finally:
        console.close()
    if train_loader.stats.skipped:
        console.warn(f"skipped {len(train_loader.stats.skipped)} unreadable image(s) while training: "
                     + "; ".join(train_loader.stats.skipped[:5]))

    # -- the end: final weights, confusion matrix, summary -------------------------------------------------------
    final_model = ema.module if ema is not None else model
    if not last_eval:   # resumed after the last epoch had finished
        last_eval = evaluate(final_model, eval_loader, len(spec.classes), device, cfg.amp, cfg.channels_last, dist)
    final = dict(top1=last_eval["top1"], top5=last_eval["top5"], loss=last_eval["loss"], n=last_eval["n"],
                 best_top1=best["top1"], best_epoch=best["epoch"], confusion=last_eval["confusion"],
                 class_names=list(spec.classes))
    if dist.is_main:
        save_model_file(out / "last.safetensors", final_model.state_dict(),
                        dict(meta, weights="ema" if ema else "model", epoch=cfg.epochs, step=global_step,
                             top1=final["top1"], top5=final["top5"]))
        atomic_write_json(out / "confusion.json", dict(class_names=list(spec.classes), matrix=final["confusion"]))
    barrier(dist)
    return TrainResult(out=out, model=model, ema=ema.module if ema is not None else None, history=history,
                       final=final, timers=timer.summary(), wall_s=time.perf_counter() - t_start,
                       train_images=train_images * dist.world_size, resumed_from=resumed_from, rank=dist.rank,
                       meta=meta)


def summarize(result: TrainResult) -> str:
    """A few lines: final accuracy, time, and where the training time went."""
    f = result.final
    lines = [f"top-1 {f['top1']:.2f}%  top-5 {f['top5']:.2f}%  (best top-1 {f['best_top1']:.2f}% at epoch "
             f"{f['best_epoch']}) on {f['n']} images; wall time {format_duration(result.wall_s)}; "
             f"weights in {result.out / 'last.safetensors'}"]
    t = result.timers
    phases = [p for p in ("setup", "data", "forward", "backward", "optimizer", "eval", "checkpoint") if p in t]
    total = sum(t[p] for p in phases)
    if total > 0:
        lines.append("time: " + ", ".join(f"{p} {t[p]:.1f} s ({100 * t[p] / total:.0f}%)" for p in phases))
    return "\n".join(lines)


def load_run_config(out: str | Path) -> TrainConfig:
    """The TrainConfig a run directory was started with."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {out}")
    return TrainConfig.from_dict(read_json(path))


def dumps_confusion(matrix: list[list[int]], classes: Sequence[str]) -> str:
    """The confusion matrix as aligned text (rows: true class, columns: predicted)."""
    width = max(5, *(len(str(v)) for row in matrix for v in row))
    names = [c[:12] for c in classes]
    head = " " * 13 + " ".join(f"{i:>{width}}" for i in range(len(classes)))
    rows = [f"{i:>2} {names[i]:<10}" + " ".join(f"{v:>{width}}" for v in row) for i, row in enumerate(matrix)]
    return "\n".join([head] + rows)


