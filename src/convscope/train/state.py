"""The state of a run in progress (`RunState`), and how a checkpoint saves it and a resume puts it back.

The random generators are not fields: the model's own randomness (stochastic depth, dropout) draws from torch's
global generator, so a checkpoint gathers every rank's torch (and CUDA) generator state, with numpy's and
python's, and a resume sets them again. Batches need none of them (they are seeded by their position).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.loaders import Loader
from .checkpoint import CheckpointManager, TrainingCheckpoint, rng_state_json, save_model_file, set_rng_state_json
from .config import TrainConfig
from .distributed import DistInfo, all_gather_tensors
from .recipe import ModelEma, WarmupCosine
from .report import PhaseTimer


@dataclass
class RunState:
    """What the loop, evaluation, checkpointing and resume share. (epoch, step_in_epoch) is the next optimizer
    step to take, which is where a checkpoint written now resumes."""

    cfg: TrainConfig
    dist: DistInfo
    ckpts: CheckpointManager
    meta: dict[str, Any]   # the model description every weights file carries
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    ema: ModelEma | None
    train_loader: Loader
    eval_loader: Loader
    steps_per_epoch: int
    loss_sum: torch.Tensor   # this rank's summed training loss in the current epoch (float64)
    seen: int = 0            # the images in loss_sum
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"top1": -1.0, "epoch": None})
    resumed_from: int | None = None
    epochs: int = 0          # the epochs planned: cfg.epochs, or what fits the time budget once it is measured
    budget_fitted: bool = False   # whether the epochs were fitted to the time budget

    def __post_init__(self) -> None:
        if not self.epochs:
            self.epochs = self.cfg.epochs

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def weights(self) -> nn.Module:
        """The weights the run hands out: the EMA's when there is one, else the model's."""
        return self.ema.module if self.ema is not None else self.model

    def save_weights(self, name: str, epoch: int, scores: dict[str, Any]) -> None:
        """`weights` as the self-describing file `out/name`, with the epoch, step and scores that go with them."""
        save_model_file(self.out / name, self.weights.state_dict(),
                        dict(self.meta, weights="ema" if self.ema is not None else "model", epoch=epoch,
                             step=self.global_step, top1=scores["top1"], top5=scores["top5"]))

    def data_description(self) -> dict[str, Any]:
        """What the training data order depends on; a resume checks it against the checkpoint's."""
        cfg = self.cfg
        return dict(train_size=len(self.train_loader.dataset), world_size=self.dist.world_size,
                    batch_size=cfg.batch_size, accum_steps=cfg.accum_steps, steps_per_epoch=self.steps_per_epoch,
                    order="DistributedSampler permutation seeded by seed + epoch; batch transforms seeded by "
                          "(seed, epoch, step, rank)")


def seed_all(seed: int) -> None:
    """Seed torch's, numpy's and python's global generators."""
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


def save_checkpoint(run: RunState, timer: PhaseTimer) -> None:
    """Checkpoint the run at (epoch, step_in_epoch). Every rank must call it; rank 0 writes."""
    rng = _gather_rng(run.dist)   # a collective: every rank takes part
    if not run.dist.is_main:
        return
    with timer("checkpoint"):
        order = _order_digest(run.train_loader, run.epoch) if run.epoch < run.epochs else None
        state = dict(epoch=run.epoch, step_in_epoch=run.step_in_epoch, global_step=run.global_step,
                     schedule=run.schedule.state_dict(), data=dict(run.data_description(), epoch_order=order),
                     epoch_loss_sum=float(run.loss_sum), epoch_seen=run.seen, history=run.history, best=run.best,
                     config=run.cfg.to_dict(), rng=rng_state_json(), epochs=run.epochs,
                     budget_fitted=run.budget_fitted)
        run.ckpts.save(run.global_step, model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
                       state=state, meta=dict(run.meta, epoch=run.epoch, step=run.global_step), rng=rng,
                       ema=run.ema.module.state_dict() if run.ema is not None else None)


def restore_checkpoint(run: RunState, ck: TrainingCheckpoint) -> None:
    """Put a checkpoint back into `run`: weights, optimizer, schedule, position, history and every generator.
    ValueError when the run's settings or data differ from the checkpoint's."""
    diff = run.cfg.semantic_diff(TrainConfig.from_dict(ck.state["config"]))
    if diff:
        raise ValueError(f"--resume with settings that differ from the run in {run.out}: {'; '.join(diff)}")
    data = run.data_description()
    if ck.state["data"] != dict(data, epoch_order=ck.state["data"]["epoch_order"]):
        raise ValueError(f"the data differs from the checkpoint's: {ck.state['data']} vs {data}")
    run.epochs = ck.state.get("epochs", run.cfg.epochs)
    run.budget_fitted = ck.state.get("budget_fitted", False)
    run.schedule.total_steps = ck.state["schedule"]["total_steps"]   # the time budget may have fitted it
    run.model.load_state_dict(ck.model)
    if run.ema is not None:
        run.ema.module.load_state_dict(ck.ema)
    run.optimizer.load_state_dict(ck.optimizer)
    run.schedule.load_state_dict(ck.state["schedule"])
    run.epoch, run.step_in_epoch = ck.state["epoch"], ck.state["step_in_epoch"]
    run.global_step, run.history, run.best = ck.state["global_step"], ck.state["history"], ck.state["best"]
    run.loss_sum = torch.tensor(ck.state["epoch_loss_sum"], dtype=torch.float64, device=run.device)
    run.seen = ck.state["epoch_seen"]
    if run.epoch < run.epochs and ck.state["data"]["epoch_order"] != _order_digest(run.train_loader, run.epoch):
        raise ValueError("the training data order differs from the checkpoint's (did the dataset change?)")
    torch.set_rng_state(ck.rng[f"torch.rank{run.dist.rank}"])
    if run.device.type == "cuda":
        torch.cuda.set_rng_state(ck.rng[f"cuda.rank{run.dist.rank}"], run.device)
    set_rng_state_json(ck.state["rng"])
    run.resumed_from = run.global_step
