"""The loop's plug-ins: the weight EMA, evaluation, checkpoints, the metric files and the console.

`train` (engine.py) passes them in this order, which is the order they act at each event:

    EMA, FitTimeBudget (budget.py), Evaluation, Checkpointing, Metrics, Trackers (trackers.py), Progress

so at an epoch's end the evaluation runs before the best weights are chosen and the metric files and the
console line follow. Checkpoints are written once every callback has seen the event (`Loop.after_event`), so they
hold every callback's state after it (the EMA's update, the time budget's plan, the epoch's record).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.loaders import Loader
from ..files import atomic_write_json
from ..models.source import save_model_file
from .checkpoint import CheckpointManager
from .loop import Callback, Loop
from .recipe import ModelEma
from .report import Console, plot_curves, write_metrics
from .state import save_checkpoint
from .task import Task


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) became NaN or infinite; the run stopped without saving the bad weights."""


class EMA(Callback):
    """An exponential moving average of the weights (recipe.ModelEma), updated after every optimizer step; its
    weights are its state (the checkpoint's ema.safetensors)."""

    name = "ema"

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.ema = ModelEma(model, decay, warmup)
        self.module = self.ema.module

    def on_step_end(self, loop: Loop) -> None:
        with loop.timer("optimizer"):
            self.ema.update(loop.model, loop.global_step - 1)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.module.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)


class Evaluation(Callback):
    """Scores `models` (name -> model; "" for the trained one, e.g. "ema" for its average) with the task's
    evaluator on `loader` every `every` epochs and after the last one. The epoch's record gets each model's float
    scores (prefixed "<name>_", the loss as eval_loss); `scores` holds the last model's (the weights the run hands
    out) for the epoch, None when it was not evaluated; `final` those of the run's end."""

    name = "evaluation"

    def __init__(self, task: Task, loader: Loader, models: Mapping[str, nn.Module], every: int = 1) -> None:
        self.task, self.loader, self.models, self.every = task, loader, dict(models), every
        self.metrics = task.metrics
        self.scores: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None   # the last evaluation in this process

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The evaluator's scores of `model` on the whole loader (in eval mode; its mode is put back)."""
        was_training = model.training
        model.eval()
        self.metrics.reset()
        self.loader.set_epoch(0)
        for batch in self.loader:
            batch = self.task.to_device(batch)
            self.metrics.update(self.task.predict(model, batch), batch)
        model.train(was_training)
        return self.metrics.compute()

    def on_validation(self, loop: Loop, record: dict[str, Any]) -> None:
        self.scores = None
        if loop.epoch % self.every and loop.epoch < loop.epochs:
            return
        with loop.timer("eval"):
            for prefix, model in self.models.items():
                self.scores = self._last = self.evaluate(model)
                record.update({(f"{prefix}_" if prefix else "") + ("eval_loss" if k == "loss" else k): v
                               for k, v in self.scores.items() if isinstance(v, float)})

    def on_fit_end(self, loop: Loop) -> None:
        """The final scores: the last evaluation's, or (resumed after the last epoch) an evaluation now."""
        self.final = self._last if self._last is not None else self.evaluate(list(self.models.values())[-1])


class Checkpointing(Callback):
    """Checkpoints (every `every` steps inside an epoch, and at each epoch's end; `manager` keeps the newest),
    best.safetensors whenever the evaluator's primary score improves, last.safetensors at the end. `weights` are
    the weights the run hands out (the EMA's when there is one, else the model: `weights_name` says which), `meta`
    describes them, `extra` goes into every state.json. It stops a run whose loss or weights turn non-finite
    (checked every step on the CPU, where it costs nothing, and before every checkpoint), without saving them."""

    name = "checkpointing"

    def __init__(self, manager: CheckpointManager, evaluation: Evaluation, weights: nn.Module, weights_name: str,
                 meta: Mapping[str, Any], every: int = 0, extra: Mapping[str, Any] | None = None,
                 hint: str = "") -> None:
        self.manager, self.evaluation, self.weights, self.weights_name = manager, evaluation, weights, weights_name
        self.meta, self.every, self.extra, self.hint = dict(meta), every, dict(extra or {}), hint
        self.metrics = evaluation.metrics
        self.best: dict[str, Any] = {"epoch": None}   # the epoch and headline scores of best.safetensors

    def state_dict(self) -> dict[str, Any]:
        return dict(best=self.best)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]

    def check_finite(self, loop: Loop, what: str, value: torch.Tensor | None = None) -> None:
        """TrainingDiverged when `value` (default: every weight of the model) holds a NaN or infinity."""
        if value is None:
            ok = all(bool(torch.isfinite(p).all()) for p in loop.model.parameters())
        else:
            ok = bool(torch.isfinite(value).all())
        if ok:
            return
        latest = self.manager.latest() if loop.dist.is_main else None
        kept = f"the last good checkpoint is {latest}" if latest is not None else "no checkpoint had been written yet"
        raise TrainingDiverged(
            f"training diverged: {what} is not finite at epoch {loop.epoch + 1}, step {loop.global_step} (lr "
            f"{loop.lr:.3g}); stopped without saving it; {kept}. {self.hint}".rstrip())

    def on_step_end(self, loop: Loop) -> None:
        if loop.device.type == "cpu":   # a sync per step costs nothing on the CPU; on CUDA: at checkpoints
            self.check_finite(loop, "the training loss", loop.loss_sum)
        due = bool(self.every) and loop.global_step % self.every == 0 and not loop.epoch_ends
        if due or loop.epoch_ends:
            self.check_finite(loop, "the training loss", loop.loss_sum)
            self.check_finite(loop, "a weight")
        if due:
            loop.after_event(lambda: save_checkpoint(loop, self.manager, self.meta, self.extra))

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        scores = self.evaluation.scores
        if scores is not None and self._improves(scores[self.metrics.primary]):
            self.best = dict(epoch=loop.epoch, **{k: scores[k] for k in self.metrics.labels})
            self.save_weights(loop, "best.safetensors", loop.epoch, scores)
        loop.after_event(lambda: save_checkpoint(loop, self.manager, self.meta, self.extra))

    def on_fit_end(self, loop: Loop) -> None:
        self.save_weights(loop, "last.safetensors", loop.epochs, self.evaluation.final)

    def _improves(self, score: float) -> bool:
        best = self.best.get(self.metrics.primary)
        if math.isnan(score):
            return False
        return best is None or (score > best if self.metrics.higher_is_better else score < best)

    def save_weights(self, loop: Loop, name: str, epoch: int, scores: Mapping[str, Any]) -> None:
        """`weights` as the self-describing file `name` beside the checkpoints, with the epoch, step and headline
        scores that go with them (rank 0 writes)."""
        if loop.dist.is_main:
            save_model_file(self.manager.directory.parent / name, self.weights.state_dict(),
                            dict(self.meta, weights=self.weights_name, epoch=epoch, step=loop.global_step,
                                 **{k: scores[k] for k in self.metrics.labels}))

    def best_scores(self) -> dict[str, Any]:
        """The best primary score and its epoch, as the final result reports them."""
        return {f"best_{self.metrics.primary}": self.best.get(self.metrics.primary), "best_epoch": self.best["epoch"]}


class Metrics(Callback):
    """The run's history, one record per epoch: metrics.jsonl and curves.png (`plot`, when matplotlib is there)
    rewritten after each epoch, and the evaluator's files (e.g. confusion.json) at the end; rank 0 writes into
    `out`."""

    name = "metrics"

    def __init__(self, out: str | Path, evaluation: Evaluation, plot: bool = True, title: str = "") -> None:
        self.out, self.evaluation, self.plot, self.title = Path(out), evaluation, plot, title
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return dict(history=self.history)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = state["history"]

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not loop.dist.is_main:
            return
        write_metrics(self.out / "metrics.jsonl", self.history)
        if self.plot:
            m = self.evaluation.metrics
            names = [name for name in self.evaluation.models if name]
            plot_curves(self.out / "curves.png", self.history, self.title, dict(m.labels), m.axis,
                        {f"{n}_{m.primary}": f"{n.upper()} {m.labels[m.primary]}" for n in names})

    def on_fit_end(self, loop: Loop) -> None:
        if loop.dist.is_main:
            for name, content in self.evaluation.metrics.files(self.evaluation.final).items():
                atomic_write_json(self.out / name, content)


class Progress(Callback):
    """The console: a run bar and an epoch bar (or nothing in plain mode) while training, one line per epoch
    with its loss, headline scores (the other models' primary score), learning rate, speed and ETA."""

    name = "progress"

    def __init__(self, console: Console, evaluation: Evaluation) -> None:
        self.console, self.evaluation = console, evaluation
        m = evaluation.metrics
        self.shown: Sequence[tuple[str, str]] = [(k, f"{label} {m.fmt}") for k, label in m.labels.items()] + [
            (f"{n}_{m.primary}", f"{n.upper()} {m.labels[m.primary]} {m.fmt}") for n in evaluation.models if n]

    def on_fit_start(self, loop: Loop) -> None:
        self.console.start(loop.total_steps, loop.global_step)
        self.t_start = time.perf_counter()

    def on_epoch_start(self, loop: Loop) -> None:
        self.console.epoch_start(loop.epoch, loop.epochs, loop.steps_per_epoch, loop.step_in_epoch)

    def on_step_end(self, loop: Loop) -> None:
        self.console.step(loop.step_samples, lambda: float(loop.loss_sum) / max(loop.seen, 1))

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - self.t_start
        done = loop.global_step - (loop.resumed_from or 0)
        eta = elapsed / max(done, 1) * (loop.total_steps - loop.global_step)
        self.console.epoch_end(record, eta if loop.global_step < loop.total_steps else None, self.shown)

    def on_fit_end(self, loop: Loop) -> None:
        self.console.close()

    def on_exception(self, loop: Loop, error: BaseException) -> None:
        self.console.close()

