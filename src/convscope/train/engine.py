"""The training engine: `train(TrainConfig)` runs a whole training run, and reads top to bottom like one.

Reproducibility: every batch (its images, augmentation and mixing) is a function of (seed, epoch, step, rank);
the model's own randomness (stochastic depth, dropout) comes from the global torch generator, whose state is
checkpointed with everything else. Resuming from a checkpoint therefore continues bit for bit where the run was.
"""
from __future__ import annotations

import hashlib
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import atomic_write_json
from ..models import create_model, model_card
from ..utils import set_threads
from .checkpoint import CheckpointManager, rng_state_json, save_model_file, set_rng_state_json
from .config import TrainConfig
from .distributed import DistInfo, all_gather_tensors, all_reduce_sum, barrier, destroy_distributed, init_distributed
from .evaluation import evaluate
from .loaders import Loader
from .pipeline import build_data, make_loaders
from .recipe import ModelEma, TrainModule, WarmupCosine, loss_fn, param_groups
from .report import Console, PhaseTimer, plot_curves, write_metrics
from .summary import TrainResult


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
