"""The training engine: `train(TrainConfig)` runs a whole training run, and reads top to bottom like one.

Reproducibility: every batch (its images, augmentation and mixing) is a function of (seed, epoch, step, rank);
the model's own randomness (stochastic depth, dropout) comes from the global torch generator, whose state is
checkpointed with everything else. Resuming from a checkpoint therefore continues bit for bit where the run was.
What a checkpoint saves and a resume restores is the loop's `RunState` (state.py).
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..extras import available, missing_message
from ..files import atomic_write_json, check_output_dir, clean_temp_files
from ..models import create_model, model_card
from ..utils import set_threads
from .budget import TimeBudget
from .checkpoint import CheckpointManager
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, barrier, destroy_distributed, init_distributed
from .evaluation import evaluate_run
from .pipeline import build_data, make_loaders, resolve_defaults
from .recipe import ModelEma, TrainModule, WarmupCosine, loss_fn, param_groups
from .report import Console, PhaseTimer, plot_curves, write_metrics
from .state import RunState, restore_checkpoint, save_checkpoint, seed_all
from .summary import TrainResult, describe_run


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; rank 0 writes everything under `cfg.out`."""
    t_start = time.perf_counter()
    out = check_output_dir(cfg.out, "--out")
    threads = set_threads(cfg.threads)   # None leaves torch's thread count as it is; restored at the end
    try:
        dist = init_distributed(cfg.device, cfg.dist_timeout)
        try:
            return _train(cfg, dist, t_start, out)
        finally:
            destroy_distributed()
    finally:
        torch.set_num_threads(threads)


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) became NaN or infinite; the run stopped without saving the bad weights."""


def _check_finite(run: RunState, what: str, value: torch.Tensor | None = None) -> None:
    """TrainingDiverged when `value` (default: every weight of the model) holds a NaN or infinity."""
    if value is None:
        ok = all(bool(torch.isfinite(p).all()) for p in run.model.parameters())
    else:
        ok = bool(torch.isfinite(value).all())
    if ok:
        return
    latest = run.ckpts.latest() if run.dist.is_main else None
    kept = (f"the last good checkpoint is {latest}" if latest is not None else "no checkpoint had been written yet")
    raise TrainingDiverged(
        f"training diverged: {what} is not finite at epoch {run.epoch + 1}, step {run.global_step} (lr "
        f"{run.schedule.lr_at(max(run.global_step - 1, 0)):.3g}); stopped without saving it; {kept}. "
        "Try a lower --lr, --clip-grad 1 or --amp fp32")


def _set_steps(run: RunState, total_steps: int) -> None:
    """Plan `total_steps` optimizer steps: the cosine ends there, and so does the run (in a partial last epoch
    when it falls inside one)."""
    run.schedule.total_steps = total_steps
    run.schedule.warmup_steps = min(run.schedule.warmup_steps, total_steps)
    run.epochs = -(-total_steps // run.steps_per_epoch)


def _plan(run: RunState, total_steps: int, budget: TimeBudget, console: Console, speed: str) -> None:
    """Fix the run's length to what fits in the time budget (at most --epochs) and say why."""
    from .report import format_duration

    run.budget_fitted = True
    _set_steps(run, max(1, min(total_steps, run.cfg.epochs * run.steps_per_epoch)))
    console.log(f"time budget {format_duration(budget.seconds)}: measured {speed}, "
                f"~{format_duration(budget.epoch_estimate(budget.step_s))} per epoch with evaluation; "
                f"{run.schedule.total_steps / run.steps_per_epoch:.2f} of at most {run.cfg.epochs} epochs "
                f"({run.schedule.total_steps} steps) fit ({format_duration(budget.elapsed())} used so far)")


def _train(cfg: TrainConfig, dist: DistInfo, t_start: float, out: Path) -> TrainResult:
    device = dist.device
    ckpts = CheckpointManager(out / "checkpoints", cfg.keep_last)
    if not cfg.resume and ckpts.latest() is not None:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume and ckpts.latest() is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpts.directory}")
    console = Console("none" if cfg.quiet else cfg.progress, enabled=dist.is_main)
    timer = PhaseTimer(device)
    plot = available("matplotlib")
    if not plot and dist.is_main:
        console.warn(missing_message("matplotlib", "curves.png") + "; the run writes everything else")

    # -- data, model ---------------------------------------------------------------------------------------------
    card = model_card(cfg.model)
    with timer("setup"):   # reading the data, building the model
        reserved = sorted(set(cfg.model_kwargs) & {"num_classes", "in_chans", "drop_path_rate", "drop_rate",
                                                      "pretrained", "features_only", "out_indices"})
        if reserved:
            raise ValueError(f"--model-kwargs may not set {reserved}: the run sets them (from the data, or "
                             "--drop-path / --drop-rate / --in-chans)")
        try:
            with torch.device("meta"):
                probe = create_model(cfg.model, **cfg.model_kwargs)
        except Exception as e:  # the constructor's own complaint about a user's keyword arguments
            if not cfg.model_kwargs:
                raise
            raise ValueError(f"--model-kwargs {json.dumps(cfg.model_kwargs)} do not build {cfg.model}: "
                             f"{type(e).__name__}: {e}") from None
        spec = build_data(cfg, probe, console)
        cfg, defaults_line = resolve_defaults(cfg, spec, dist.world_size)
        train_loader, eval_loader = make_loaders(cfg, spec, dist)
        drop_path = card.drop_path_rate if cfg.drop_path is None else cfg.drop_path
        extra = {} if cfg.drop_rate is None else dict(drop_rate=cfg.drop_rate)
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=len(spec.classes), in_chans=spec.in_chans,
                             drop_path_rate=drop_path, **cfg.model_kwargs, **extra)
        pruning = None
        if cfg.init_from is not None:   # start from given weights (a pruned model takes its pruned widths)
            from .init import init_from_
            pruning = init_from_(model, cfg.init_from, model_name=card.name, num_classes=len(spec.classes),
                                 in_chans=spec.in_chans)
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = model.to(device, memory_format=memory_format)
    meta = dict(model=card.name, model_kwargs=cfg.model_kwargs, num_classes=len(spec.classes),
                in_chans=spec.in_chans, input_size=list(spec.input_size), load_size=list(spec.load_size),
                crop_pct=spec.crop_pct, mean=list(spec.mean), std=list(spec.std), class_names=list(spec.classes),
                data=cfg.data)
    if pruning:
        meta["pruning"] = pruning   # load_model rebuilds the pruned widths from it

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
    check_each_step = device.type == "cpu"   # a sync per step costs nothing on the CPU; on CUDA: at epoch ends
    # What evaluation, checkpoints and resume share; the loop below advances its position, loss sums and history.
    run = RunState(cfg=cfg, dist=dist, ckpts=ckpts, meta=meta, model=model, optimizer=optimizer, schedule=schedule,
                   ema=ema, train_loader=train_loader, eval_loader=eval_loader, steps_per_epoch=steps_per_epoch,
                   loss_sum=torch.zeros((), dtype=torch.float64, device=device))

    # -- fresh start or resume -----------------------------------------------------------------------------------
    if cfg.resume:
        ck = ckpts.load_newest_intact(console.warn)
        restore_checkpoint(run, ck)
        console.log(f"resumed from {ck.path} (epoch {run.epoch + 1}, step {run.step_in_epoch}/{steps_per_epoch})")
    else:
        seed_all(cfg.seed + dist.rank)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "config.json", cfg.to_dict())
    if dist.is_main:
        ckpts.clean_partial()
        clean_temp_files(out)
    if defaults_line:
        console.log(defaults_line)
    console.log(describe_run(run, spec))

    # -- the loop ------------------------------------------------------------------------------------------------
    budget = None
    if cfg.time_budget is not None and not run.budget_fitted:
        budget = TimeBudget(cfg.time_budget, t_start, steps_per_epoch, cfg.epochs,
                            cfg.batch_size * cfg.accum_steps * dist.world_size, len(eval_loader.dataset),
                            cfg.eval_every, schedule.warmup_steps)
    console.start(total_steps, run.global_step)
    train_images = 0
    last_eval: dict[str, Any] = {}
    t_loop = time.perf_counter()
    epoch = run.epoch
    try:
        while epoch < run.epochs:
            model.train()
            train_loader.set_epoch(epoch, run.step_in_epoch * cfg.accum_steps)
            console.epoch_start(epoch, run.epochs, steps_per_epoch, run.step_in_epoch)
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
                    if check_each_step:
                        _check_finite(run, "the training loss", loss.detach())
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
                if budget is not None and not run.budget_fitted:
                    total = budget.after_step(run.global_step)
                    if total is not None:
                        _plan(run, total, budget, console, f"{budget.images_per_step / budget.step_s:.0f} img/s "
                              f"over steps 3-{budget.probe_steps + 2}")
                if run.global_step >= run.schedule.total_steps:   # a time budget ended the run inside this epoch
                    break
                if cfg.checkpoint_every and run.global_step % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                    _check_finite(run, "the training loss", run.loss_sum)
                    _check_finite(run, "a weight")
                    save_checkpoint(run, timer)

            # -- end of epoch: evaluate, record, checkpoint ----------------------------------------------------------
            epoch_time = time.perf_counter() - t_epoch
            _check_finite(run, "the training loss", run.loss_sum)
            _check_finite(run, "a weight")
            train_images += epoch_images
            total_seen = all_reduce_sum(torch.tensor([float(run.loss_sum), float(run.seen)], dtype=torch.float64,
                                                     device=device), dist).tolist()
            record = dict(epoch=epoch + 1, step=run.global_step, lr=lr,
                          train_loss=float(total_seen[0] / max(total_seen[1], 1)),
                          train_img_per_s=epoch_images * dist.world_size / max(epoch_time, 1e-9),
                          epoch_time_s=epoch_time)
            if budget is not None and not run.budget_fitted:   # the epoch was too short to time step by step
                budget.step_s = epoch_time / max(run.global_step - (run.resumed_from or 0), 1)
                _plan(run, budget.fit_steps(run.global_step, budget.step_s), budget, console,
                      f"{epoch_images / max(epoch_time, 1e-9):.0f} img/s over epoch {epoch + 1}")
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == run.epochs:
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
            if budget is not None and run.budget_fitted and epoch + 1 < run.epochs:
                pace = (time.perf_counter() - t_epoch) / max(run.global_step - epoch * steps_per_epoch, 1)
                fitted = budget.refit(run.global_step, run.schedule.total_steps, pace)
                if fitted < run.schedule.total_steps:
                    console.warn(f"the machine got slower: {fitted} steps fit in the time budget instead of "
                                 f"{run.schedule.total_steps}; the schedule ends there")
                    _set_steps(run, fitted)
            run.history.append(record)
            run.epoch, run.step_in_epoch = epoch + 1, 0
            run.loss_sum, run.seen = torch.zeros((), dtype=torch.float64, device=device), 0
            save_checkpoint(run, timer)
            if dist.is_main:
                write_metrics(out / "metrics.jsonl", run.history)
                if plot:
                    plot_curves(out / "curves.png", run.history, f"{card.name} on {spec.description}")
            elapsed = time.perf_counter() - t_loop
            done = run.global_step - (run.resumed_from or 0)
            total_steps = run.schedule.total_steps
            eta = elapsed / max(done, 1) * (total_steps - run.global_step)
            console.epoch_end(record, eta if run.global_step < total_steps else None)
            epoch += 1
    finally:
        console.close()
    if train_loader.stats.skipped:
        console.warn(f"skipped {len(train_loader.stats.skipped)} unreadable image(s) while training: "
                     + "; ".join(train_loader.stats.skipped[:5]))
    eval_skipped = sorted(set(eval_loader.stats.skipped))
    if eval_skipped:
        console.warn(f"{len(eval_skipped)} evaluation image(s) could not be read and are not counted in top-1: "
                     + "; ".join(eval_skipped[:5]))

    # -- the end: final weights, confusion matrix, summary -------------------------------------------------------
    if not last_eval:   # resumed after the last epoch had finished
        last_eval = evaluate_run(run, run.weights)
    final = dict(top1=last_eval["top1"], top5=last_eval["top5"], loss=last_eval["loss"], n=last_eval["n"],
                 best_top1=run.best["top1"], best_epoch=run.best["epoch"], confusion=last_eval["confusion"],
                 class_names=list(spec.classes))
    if dist.is_main:
        run.save_weights("last.safetensors", run.epochs, final)
        atomic_write_json(out / "confusion.json", dict(class_names=list(spec.classes), matrix=final["confusion"]))
    barrier(dist)
    return TrainResult(out=out, model=model, ema=ema.module if ema is not None else None, history=run.history,
                       final=final, timers=timer.summary(), wall_s=time.perf_counter() - t_start,
                       train_images=train_images * dist.world_size, resumed_from=run.resumed_from, rank=dist.rank,
                       meta=meta)
