"""The training engine: `train(TrainConfig)` builds the config's task (classification here; segmentation in
segmentation.py, super-resolution in superres.py) and the loop's callbacks, and runs the loop (loop.py); it reads
top to bottom like the run it makes.

Reproducibility: every batch (its images, augmentation and mixing) is a function of (seed, epoch, step, rank);
the model's own randomness (stochastic depth, dropout) comes from the global torch generator, whose state is
checkpointed with everything else. Resuming from a checkpoint therefore continues bit for bit where the run was.
What a checkpoint saves and a resume restores is in state.py.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..data.loaders import Loader
from ..extras import available, missing_message
from ..files import check_output_dir, clean_temp_files
from ..models import ModelTraits, create_model, model_card, model_traits, resolve_name
from ..utils import set_threads
from .budget import FitTimeBudget
from .callbacks import EMA, Checkpointing, Evaluation, Metrics, Progress
from .checkpoint import CheckpointManager
from .config import PRETRAIN_TASKS, TrainConfig, write_run_config
from .distributed import DistInfo, barrier, convert_sync_batchnorm, destroy_distributed, init_distributed
from .loop import Callback, Loop, steps_per_epoch
from .parts import RunParts
from .pipeline import DataSpec, build_data, make_loaders, resolve_defaults
from .recipe import WarmupCosine, param_groups
from .report import Console, PhaseTimer
from .state import restore_checkpoint, seed_all
from .summary import TrainResult, describe_run
from .task import ClassificationTask, Task
from .trackers import Trackers, check_trackers

RESERVED_KWARGS = {"num_classes", "in_chans", "drop_path_rate", "drop_rate", "pretrained", "features_only",
                   "out_indices"}
DIVERGED_HINT = "Try a lower --lr, --clip-grad 1 or --amp fp32"


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; rank 0 writes everything under `cfg.out`."""
    t_start = time.perf_counter()
    out = check_output_dir(cfg.out, "--out")
    check_trackers(cfg.log)
    threads = set_threads(cfg.threads)   # None leaves torch's thread count as it is; restored at the end
    try:
        dist = init_distributed(cfg.device, cfg.dist_timeout)
        try:
            return _train(cfg, dist, t_start, out)
        finally:
            destroy_distributed()
    finally:
        torch.set_num_threads(threads)


def _traits(cfg: TrainConfig) -> ModelTraits:
    """The variant's facts the data pipeline reads (input sizes, strides), from the registry without building the
    model; a ValueError naming --model-kwargs when the family does not take them."""
    reserved = sorted(set(cfg.model_kwargs) & RESERVED_KWARGS)
    if reserved:
        raise ValueError(f"--model-kwargs may not set {reserved}: the run sets them (from the data, or "
                         "--drop-path / --drop-rate / --in-chans)")
    try:
        return model_traits(cfg.model, **cfg.model_kwargs)
    except (TypeError, ValueError) as e:
        raise _kwargs_error(cfg, e) from None


def _kwargs_error(cfg: TrainConfig, e: Exception) -> Exception:
    """The constructor's own complaint about a user's --model-kwargs, in one line naming them."""
    if not cfg.model_kwargs:
        return e
    return ValueError(f"--model-kwargs {json.dumps(cfg.model_kwargs)} do not build {cfg.model}: "
                      f"{type(e).__name__}: {e}")


def _model(cfg: TrainConfig, spec: DataSpec, device: torch.device) -> tuple[nn.Module, dict]:
    """The model to train, on `device` (from --init-from's weights when given), and the description every
    weights file of the run carries."""
    card = model_card(cfg.model)
    drop_path = card.drop_path_rate if cfg.drop_path is None else cfg.drop_path
    extra = {} if cfg.drop_rate is None else dict(drop_rate=cfg.drop_rate)
    torch.manual_seed(cfg.seed)
    try:
        model = create_model(cfg.model, num_classes=len(spec.classes), in_chans=spec.in_chans,
                             drop_path_rate=drop_path, **cfg.model_kwargs, **extra)
    except Exception as e:  # noqa: BLE001 - the constructor's own complaint, whatever its type
        raise _kwargs_error(cfg, e) from None
    pruning = None
    if cfg.init_from is not None:   # start from given weights (a pruned model takes its pruned widths)
        from .init import init_from_
        pruning = init_from_(model, cfg.init_from, model_name=card.name, num_classes=len(spec.classes),
                             in_chans=spec.in_chans)
    if cfg.pretrained is not None:  # released weights: classifier re-initialised, input conv adapted
        from ..models.pretrained import load_pretrained
        load_pretrained(model, card.name, _pretrained_spec(cfg.pretrained, card.name),
                        num_classes=len(spec.classes), in_chans=spec.in_chans)
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    meta = dict(model=card.name, model_kwargs=cfg.model_kwargs, num_classes=len(spec.classes),
                in_chans=spec.in_chans, input_size=list(spec.input_size), load_size=list(spec.load_size),
                crop_pct=spec.crop_pct, mean=list(spec.mean), std=list(spec.std), class_names=list(spec.classes),
                data=cfg.data)
    if pruning:
        meta["pruning"] = pruning   # load_model rebuilds the pruned widths from it
    return model, meta


def _pretrained_spec(value: str, name: str) -> bool | str:
    """load_pretrained's spec for --pretrained: the model's own name is its default release (True)."""
    try:
        return True if resolve_name(value) == name else value
    except ValueError:
        return value


def _callbacks(cfg: TrainConfig, task: Task, eval_loader: Loader, ckpts: CheckpointManager, *,
               meta: dict, title: str, plot: bool, console: Console, dist: DistInfo,
               t_start: float) -> dict[str, Callback]:
    """The loop's plug-ins by name, in the order they act (callbacks.py)."""
    ema = EMA(task.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    models = {"": task.model, **({"ema": ema.module} if ema is not None else {})}
    evaluation = Evaluation(task, eval_loader, models, cfg.eval_every)
    budget = None
    if cfg.time_budget is not None:
        budget = FitTimeBudget(cfg.time_budget, t_start, cfg.batch_size * cfg.accum_steps * dist.world_size,
                               len(eval_loader.dataset), cfg.eval_every, console.log, console.warn)
    weights = "ema" if ema is not None else ""
    checkpointing = Checkpointing(ckpts, evaluation, models[weights], weights or "model", meta, cfg.checkpoint_every,
                                  dict(config=cfg.to_dict()), DIVERGED_HINT)
    metrics = Metrics(ckpts.directory.parent, evaluation, plot, title)
    trackers = Trackers(metrics.out, cfg.log, metrics, evaluation, cfg.to_dict()) if cfg.log else None
    return {cb.name: cb for cb in (ema, budget, evaluation, checkpointing, metrics, trackers,
                                   Progress(console, evaluation)) if cb is not None}


def _classification_run(cfg: TrainConfig, dist: DistInfo, console: Console) -> RunParts:
    """`convscope train`'s classification: the data and its defaults, the loaders, the model and the task."""
    spec = build_data(cfg, _traits(cfg), console)
    cfg, defaults_line = resolve_defaults(cfg, spec, dist.world_size)
    train_loader, eval_loader = make_loaders(cfg, spec, dist)
    model, meta = _model(cfg, spec, dist.device)
    task = ClassificationTask(model, spec.classes, dist.device, dist=dist, label_smoothing=cfg.label_smoothing,
                              amp=cfg.amp, channels_last=cfg.channels_last, msd_samples=cfg.msd_samples,
                              msd_drop=cfg.msd_drop)
    return RunParts(cfg, task, train_loader, eval_loader, meta, title=f"{meta['model']} on {spec.description}",
                    shape=f"input {spec.in_chans}x{spec.input_size[0]}x{spec.input_size[1]}, {len(spec.classes)} "
                          f"classes", description=spec.description, defaults_line=defaults_line,
                    final=dict(class_names=list(spec.classes)),
                    report=lambda warn: _report_skipped(warn, train_loader, eval_loader))


def _run_parts(cfg: TrainConfig, dist: DistInfo, console: Console) -> RunParts:
    """The run of `cfg.task`."""
    if cfg.task == "segmentation":
        from .segmentation import build_segmentation_run
        return build_segmentation_run(cfg, dist)
    if cfg.task == "sr":
        from .superres import build_sr_run
        return build_sr_run(cfg, dist)
    if cfg.task in PRETRAIN_TASKS:
        from .pretraining import build_pretrain_run
        return build_pretrain_run(cfg, dist, console)
    return _classification_run(cfg, dist, console)


def _resuming(cfg: TrainConfig, ckpts: CheckpointManager, out: Path) -> bool:
    """Whether the run continues the one in `out`: --resume needs a checkpoint there, --resume auto takes one
    when there is one (a torchrun restart continues from it) and starts afresh otherwise."""
    if cfg.resume not in (False, True, "auto"):
        raise ValueError(f"resume must be true, false or 'auto'; got {cfg.resume!r}")
    found = ckpts.latest() is not None
    if not cfg.resume and found:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume is True and not found:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpts.directory}")
    return found


def _resume(cfg: TrainConfig, loop: Loop, ckpts: CheckpointManager, out: Path, console: Console) -> None:
    """Put the newest intact checkpoint back into `loop`. The batch size and accumulation may differ from the
    run's when the number of processes changed: restore_checkpoint holds the global batch to the checkpoint's."""
    ck = ckpts.load_newest_intact(console.warn)
    saved = TrainConfig.from_dict(ck.state["config"])
    diff = cfg.semantic_diff(dataclasses.replace(saved, batch_size=cfg.batch_size, accum_steps=cfg.accum_steps))
    if diff:
        raise ValueError(f"--resume with settings that differ from the run in {out}: {'; '.join(diff)}")
    restore_checkpoint(loop, ck)
    console.log(f"resumed from {ck.path} (epoch {loop.epoch + 1}, step {loop.step_in_epoch}/{loop.steps_per_epoch})")
    saved_world, world = ck.state["data"]["world_size"], loop.dist.world_size
    if saved_world != world:
        trained = loop.step_in_epoch * cfg.batch_size * cfg.accum_steps * world
        console.log(f"the checkpoint was written by {saved_world} process(es); this run has {world}: the epoch "
                    f"continues after the {trained} samples trained")


def _train(cfg: TrainConfig, dist: DistInfo, t_start: float, out: Path) -> TrainResult:
    ckpts = CheckpointManager(out / "checkpoints", cfg.keep_last)
    resume = _resuming(cfg, ckpts, out)
    console = Console("none" if cfg.quiet else cfg.progress, enabled=dist.is_main)
    timer = PhaseTimer(dist.device)
    plot = available("matplotlib")
    if not plot and dist.is_main:
        console.warn(missing_message("matplotlib", "curves.png") + "; the run writes everything else")
    if not available("yaml") and dist.is_main and not cfg.resume:
        console.warn(missing_message("yaml", "config.yaml") + "; config.json holds the same settings")

    # -- data, model, task -------------------------------------------------------------------------------------
    with timer("setup"):   # reading the data, building the model
        parts = _run_parts(cfg, dist, console)
    cfg, task, train_loader, meta = parts.cfg, parts.task, parts.train_loader, parts.meta
    model = task.model
    if cfg.sync_bn and dist.enabled:   # before EMA copies the model and DDP wraps it
        synced = convert_sync_batchnorm(task.train_module)
        console.log(f"--sync-bn: {synced} BatchNorm layer(s) take their statistics over all {dist.world_size} ranks"
                    if synced else "--sync-bn: the model has no BatchNorm2d to synchronise")

    # -- optimizer, schedule, callbacks, loop ------------------------------------------------------------------
    layer_decay = cfg.layer_decay if cfg.layer_decay is not None or cfg.head_lr_scale == 1 else 1.0
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, layer_decay, cfg.head_lr_scale), lr=cfg.lr,
                                  betas=cfg.betas)
    spe = steps_per_epoch(len(train_loader), cfg.accum_steps)
    total_steps = spe * cfg.epochs
    schedule = WarmupCosine(optimizer, cfg.lr, cfg.min_lr, min(round(cfg.warmup_epochs * spe), total_steps),
                            total_steps)
    callbacks = _callbacks(cfg, task, parts.eval_loader, ckpts, meta=meta, title=parts.title, plot=plot,
                           console=console, dist=dist, t_start=t_start)
    if parts.callbacks is not None:   # the task's own outputs (figures, files), given the weights handed out
        weights = callbacks["ema"].module if "ema" in callbacks else model
        callbacks.update({cb.name: cb for cb in parts.callbacks(out, weights, console)})
    loop = Loop(task, optimizer, schedule, train_loader, callbacks=list(callbacks.values()),
                accum_steps=cfg.accum_steps, clip_grad=cfg.clip_grad, dist=dist, compile=cfg.compile, timer=timer)

    # -- fresh start or resume ---------------------------------------------------------------------------------
    if resume:
        _resume(cfg, loop, ckpts, out, console)
    else:
        seed_all(cfg.seed + dist.rank)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_run_config(out, cfg)
    if dist.is_main:
        ckpts.clean_partial()
        clean_temp_files(out)
    if parts.defaults_line:
        console.log(parts.defaults_line)
    console.log(describe_run(cfg, parts.shape, parts.description, loop, meta["model"]))

    # -- the run -----------------------------------------------------------------------------------------------
    loop.fit()
    if parts.report is not None:
        parts.report(console.warn)
    final = dict(callbacks["evaluation"].final, **callbacks["checkpointing"].best_scores(), **parts.final)
    barrier(dist)
    ema = callbacks["ema"].module if "ema" in callbacks else None
    return TrainResult(out=out, model=model, ema=ema, history=callbacks["metrics"].history, final=final,
                       timers=timer.summary(), wall_s=time.perf_counter() - t_start,
                       train_images=loop.samples * dist.world_size, resumed_from=loop.resumed_from, rank=dist.rank,
                       meta=meta)


def _report_skipped(warn: Callable[[str], None], train_loader: Loader, eval_loader: Loader) -> None:
    """Warn about the images the loaders could not read."""
    if train_loader.stats.skipped:
        warn(f"skipped {len(train_loader.stats.skipped)} unreadable image(s) while training: "
             + "; ".join(train_loader.stats.skipped[:5]))
    eval_skipped = sorted(set(eval_loader.stats.skipped))
    if eval_skipped:
        warn(f"{len(eval_skipped)} evaluation image(s) could not be read and are not counted in top-1: "
             + "; ".join(eval_skipped[:5]))
