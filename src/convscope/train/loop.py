"""The training loop: steps and epochs of a `Task`, with everything else in callbacks.

The loop owns the position (epoch, step in it, global step), the planned length, the optimizer step with
gradient accumulation and clipping, the learning-rate schedule, DDP wrapping and torch.compile. Callbacks
(callbacks.py, budget.py) are called at fixed events, in the order they are given:

    on_fit_start
    per epoch:  on_epoch_start, on_step_end after each optimizer step,
                on_validation(record) once the epoch's steps are done (the position already at the next epoch),
                on_epoch_end(record) once the record is complete
    on_fit_end, or on_exception(error) when the run fails

A callback may change the planned length (`set_total_steps`: the cosine schedule ends there, and the run, in a
partial last epoch when the end falls inside one), end the run (`request_stop`), or ask for an action once every
callback has seen the current event (`after_event`: a checkpoint written then holds every callback's state after
it, whatever their order). Each callback has a `name` and `state_dict()` / `load_state_dict()`; a checkpoint
(state.py) holds them all with the loop's own state, so a resume from any checkpoint continues bit for bit.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..data.loaders import Loader
from .distributed import DistInfo, all_reduce_sum
from .recipe import WarmupCosine
from .report import PhaseTimer
from .task import Task


class Callback:
    """A plug-in of the loop: override the events it acts on. Tensors in `state_dict()` go to the checkpoint's
    `<name>.safetensors`, everything else to its state.json (so it must be JSON)."""

    name = "callback"

    def on_fit_start(self, loop: Loop) -> None: ...

    def on_epoch_start(self, loop: Loop) -> None: ...

    def on_step_end(self, loop: Loop) -> None: ...

    def on_validation(self, loop: Loop, record: dict[str, Any]) -> None: ...

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, loop: Loop) -> None: ...

    def on_exception(self, loop: Loop, error: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"callback {self.name!r} keeps no state; the checkpoint holds {sorted(state)}")


def steps_per_epoch(batches: int, accum_steps: int) -> int:
    """Optimizer steps in an epoch of `batches` micro-batches; ValueError when there is not one."""
    if batches // accum_steps == 0:
        raise ValueError(f"an epoch has {batches} batches, fewer than --accum-steps {accum_steps}")
    return batches // accum_steps


class Loop:
    """Trains `task` with `optimizer` on `train_loader` from the current position to the planned end (`fit`)."""

    def __init__(self, task: Task, optimizer: torch.optim.Optimizer, schedule: WarmupCosine, train_loader: Loader,
                 *, callbacks: Sequence[Callback] = (), accum_steps: int = 1, clip_grad: float | None = None,
                 dist: DistInfo | None = None, compile: bool = False, timer: PhaseTimer | None = None) -> None:
        names = [cb.name for cb in callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique (they key the checkpoint); got {names}")
        self.task, self.model, self.optimizer, self.schedule = task, task.model, optimizer, schedule
        self.train_loader, self.callbacks = train_loader, list(callbacks)
        self.accum_steps, self.clip_grad = accum_steps, clip_grad
        self.dist = dist or DistInfo()
        self.timer = timer or PhaseTimer(self.dist.device)
        self.steps_per_epoch = steps_per_epoch(len(train_loader), accum_steps)
        self.epochs = -(-schedule.total_steps // self.steps_per_epoch)   # planned; ends in the last one
        self.epoch = self.step_in_epoch = self.global_step = 0            # the next optimizer step to take
        self.resumed_from: int | None = None
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)   # this rank's, this epoch
        self.seen = 0                       # the samples in loss_sum
        self.lr = schedule.lr_at(0)         # the last step's learning rate
        self.step_samples = self.epoch_samples = self.samples = 0   # this rank's: last step, this epoch, this fit
        self._pending: list[Callable[[], None]] = []   # after_event's actions
        self._ddp: nn.Module = task.train_module
        if self.dist.enabled:
            self._ddp = nn.parallel.DistributedDataParallel(
                task.train_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._step_module = torch.compile(self._ddp) if compile else self._ddp

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    @property
    def epoch_ends(self) -> bool:
        """Whether the step just taken is the epoch's last (its last batch, or the planned end)."""
        return self.step_in_epoch >= self.steps_per_epoch or self.global_step >= self.total_steps

    def set_total_steps(self, total_steps: int) -> None:
        """Plan `total_steps` optimizer steps: the cosine ends there, and so does the run."""
        self.schedule.total_steps = total_steps
        self.schedule.warmup_steps = min(self.schedule.warmup_steps, total_steps)
        self.epochs = -(-total_steps // self.steps_per_epoch)

    def request_stop(self) -> None:
        """End the run after the current step, as if it had been planned to end there: the epoch closes
        (validation, checkpoint), then the fit ends."""
        self.set_total_steps(self.global_step)

    def after_event(self, action: Callable[[], None]) -> None:
        """Run `action` once every callback has seen the current event."""
        self._pending.append(action)

    def fit(self) -> None:
        """Train to the planned end, calling the callbacks at each event."""
        try:
            self._emit("on_fit_start")
            while self.epoch < self.epochs:
                epoch_time = self._train_epoch()
                self._end_epoch(epoch_time)
            self._emit("on_fit_end")
        except BaseException as e:
            self._emit("on_exception", e)
            raise

    def _emit(self, event: str, *args: Any) -> None:
        self._pending = []
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)
        for action in self._pending:
            action()

    def _train_epoch(self) -> float:
        """The epoch's remaining optimizer steps; returns its wall time."""
        self.model.train()
        self.train_loader.set_epoch(self.epoch, self.step_in_epoch * self.accum_steps)
        self._emit("on_epoch_start")
        t_epoch, self.epoch_samples = time.perf_counter(), 0
        batches = iter(self.train_loader)
        while self.step_in_epoch < self.steps_per_epoch:
            self._step(batches)
            self._emit("on_step_end")
            if self.global_step >= self.total_steps:   # the plan ends inside this epoch
                break
        return time.perf_counter() - t_epoch

    def _step(self, batches: Iterator[Any]) -> None:
        """One optimizer step over `accum_steps` micro-batches (gradients synchronised on the last one only)."""
        self.lr = self.schedule.step(self.global_step)
        self.step_samples = 0
        for micro in range(self.accum_steps):
            with self.timer("data"):
                batch = self.task.to_device(next(batches))
            n = self.task.batch_size(batch)
            if n == 0:   # every sample of this batch was unreadable (and skipped)
                continue
            sync = micro == self.accum_steps - 1 or not self.dist.enabled
            with nullcontext() if sync else self._ddp.no_sync():
                with self.timer("forward"):
                    loss, _ = self.task.loss(self._step_module, batch)
                with self.timer("backward"):
                    (loss / self.accum_steps).backward()
            self.loss_sum += loss.detach().double() * n
            self.seen += n
            self.step_samples += n
        with self.timer("optimizer"):
            if self.clip_grad is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.step_in_epoch += 1
        self.epoch_samples += self.step_samples

    def _end_epoch(self, epoch_time: float) -> None:
        """The epoch's record (its loss averaged over every rank's samples), the position moved to the next
        epoch, then the epoch-end events."""
        total = all_reduce_sum(torch.tensor([float(self.loss_sum), float(self.seen)], dtype=torch.float64,
                                            device=self.device), self.dist).tolist()
        record = dict(epoch=self.epoch + 1, step=self.global_step, lr=self.lr,
                      train_loss=float(total[0] / max(total[1], 1)),
                      train_img_per_s=self.epoch_samples * self.dist.world_size / max(epoch_time, 1e-9),
                      epoch_time_s=epoch_time)
        self.samples += self.epoch_samples
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loss_sum, self.seen = torch.zeros((), dtype=torch.float64, device=self.device), 0
        self._emit("on_validation", record)
        self._emit("on_epoch_end", record)

    def state_dict(self) -> dict[str, Any]:
        """The position, the plan and the epoch's loss so far (JSON)."""
        return dict(epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                    epochs=self.epochs, schedule=self.schedule.state_dict(), epoch_loss_sum=float(self.loss_sum),
                    epoch_seen=self.seen)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back `state_dict()`'s plan and position; ValueError when the schedule's settings differ."""
        self.set_total_steps(state["schedule"]["total_steps"])   # a time budget may have planned it
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = self.resumed_from = state["global_step"]
        self.loss_sum = torch.tensor(state["epoch_loss_sum"], dtype=torch.float64, device=self.device)
        self.seen = state["epoch_seen"]
