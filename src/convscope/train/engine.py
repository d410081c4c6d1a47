"""The training engine: `train(TrainConfig)` runs a whole training run, and reads top to bottom like one.

Reproducibility: every batch (its images, augmentation and mixing) is a function of (seed, epoch, step, rank);
the model's own randomness (stochastic depth, dropout) comes from the global torch generator, whose state is
checkpointed with everything else. Resuming from a checkpoint therefore continues bit for bit where the run was.
What a checkpoint saves and a resume restores is the loop's `RunState` (state.py).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write_json
from ..models import create_model, model_card
from ..utils import set_threads
from .checkpoint import CheckpointManager
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, barrier, destroy_distributed, init_distributed
from .evaluation import evaluate_run
from .pipeline import build_data, make_loaders
from .recipe import ModelEma, TrainModule, WarmupCosine, loss_fn, param_groups
from .report import Console, PhaseTimer, plot_curves, write_metrics
from .state import RunState, restore_checkpoint, save_checkpoint, seed_all
from .summary import TrainResult, describe_run


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
    # What evaluation, checkpoints and resume share; the loop below advances its position, loss sums and history.
    run = RunState(cfg=cfg, dist=dist, ckpts=ckpts, meta=meta, model=model, optimizer=optimizer, schedule=schedule,
                   ema=ema, train_loader=train_loader, eval_loader=eval_loader, steps_per_epoch=steps_per_epoch,
                   loss_sum=torch.zeros((), dtype=torch.float64, device=device))

    # -- fresh start or resume -----------------------------------------------------------------------------------
    if cfg.resume:
        ck = ckpts.load()
        restore_checkpoint(run, ck)
        console.log(f"resumed from {ck.path} (epoch {run.epoch + 1}, step {run.step_in_epoch}/{steps_per_epoch})")
    else:
        seed_all(cfg.seed + dist.rank)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "config.json", cfg.to_dict())
    if dist.is_main:
        ckpts.clean_partial()
    console.log(describe_run(run, spec))

    # -- the loop ------------------------------------------------------------------------------------------------
    console.start(total_steps, run.global_step)
    train_images = 0
    last_eval: dict[str, Any] = {}
    t_loop = time.perf_counter()
    try:
        for epoch in range(run.epoch, cfg.epochs):
            model.train()
            train_loader.set_epoch(epoch, run.step_in_epoch * cfg.accum_steps)
            console.epoch_start(epoch, cfg.epochs, steps_per_epoch, run.step_in_epoch)
            t_epoch, epoch_images = time.perf_counter(), 0
            batches = iter(train_loader)
            for step in range(run.step_in_epoch, steps_per_epoch):
                lr = schedule.step(run.global_step)
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
                    run.loss_sum += loss.detach().double() * x.shape[0]
                    run.seen += x.shape[0]
                    step_images += x.shape[0]
                with timer("optimizer"):
                    if cfg.clip_grad is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(model, run.global_step)
                run.global_step += 1
                run.step_in_epoch = step + 1
                epoch_images += step_images
                console.step(step_images, lambda: float(run.loss_sum) / max(run.seen, 1))
                if cfg.checkpoint_every and run.global_step % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                    save_checkpoint(run, timer)

            # -- end of epoch: evaluate, record, checkpoint ----------------------------------------------------------
            epoch_time = time.perf_counter() - t_epoch
            train_images += epoch_images
            total_seen = all_reduce_sum(torch.tensor([float(run.loss_sum), float(run.seen)], dtype=torch.float64,
                                                     device=device), dist).tolist()
            record = dict(epoch=epoch + 1, step=run.global_step, lr=lr,
                          train_loss=float(total_seen[0] / max(total_seen[1], 1)),
                          train_img_per_s=epoch_images * dist.world_size / max(epoch_time, 1e-9),
                          epoch_time_s=epoch_time)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                with timer("eval"):
                    last_eval = evaluate_run(run, model)
                    record.update(top1=last_eval["top1"], top5=last_eval["top5"], eval_loss=last_eval["loss"])
                    if ema is not None:
                        last_eval = evaluate_run(run, ema.module)
                        record.update(ema_top1=last_eval["top1"], ema_top5=last_eval["top5"],
                                      ema_eval_loss=last_eval["loss"])
                if last_eval["top1"] > run.best["top1"]:
                    run.best = dict(top1=last_eval["top1"], top5=last_eval["top5"], epoch=epoch + 1)
                    if dist.is_main:
                        run.save_weights("best.safetensors", epoch + 1, last_eval)
            run.history.append(record)
            run.epoch, run.step_in_epoch = epoch + 1, 0
            run.loss_sum, run.seen = torch.zeros((), dtype=torch.float64, device=device), 0
            save_checkpoint(run, timer)
            if dist.is_main:
                write_metrics(out / "metrics.jsonl", run.history)
                plot_curves(out / "curves.png", run.history, f"{card.name} on {spec.description}")
            elapsed = time.perf_counter() - t_loop
            done = run.global_step - (run.resumed_from or 0)
            eta = elapsed / max(done, 1) * (total_steps - run.global_step)
            console.epoch_end(record, eta if run.global_step < total_steps else None)
    finally:
        console.close()
    if train_loader.stats.skipped:
        console.warn(f"skipped {len(train_loader.stats.skipped)} unreadable image(s) while training: "
                     + "; ".join(train_loader.stats.skipped[:5]))

    # -- the end: final weights, confusion matrix, summary -------------------------------------------------------
    if not last_eval:   # resumed after the last epoch had finished
        last_eval = evaluate_run(run, run.weights)
    final = dict(top1=last_eval["top1"], top5=last_eval["top5"], loss=last_eval["loss"], n=last_eval["n"],
                 best_top1=run.best["top1"], best_epoch=run.best["epoch"], confusion=last_eval["confusion"],
                 class_names=list(spec.classes))
    if dist.is_main:
        run.save_weights("last.safetensors", cfg.epochs, final)
        atomic_write_json(out / "confusion.json", dict(class_names=list(spec.classes), matrix=final["confusion"]))
    barrier(dist)
    return TrainResult(out=out, model=model, ema=ema.module if ema is not None else None, history=run.history,
                       final=final, timers=timer.summary(), wall_s=time.perf_counter() - t_start,
                       train_images=train_images * dist.world_size, resumed_from=run.resumed_from, rank=dist.rank,
                       meta=meta)
