"""`--time-budget`: fit the number of epochs to the speed this machine shows during the run.

Nothing is guessed from the CPU's name: the first steps of the run are timed (after two warm-up steps), and the
optimizer steps that fit in what is left of the budget (evaluations included) are planned from that speed, before
the learning-rate warm-up ends where the run is long enough, so the cosine schedule is the one a run planned with
that many steps would have had. The plan is in steps, so the last epoch may be a partial one (at most --epochs
whole epochs). At every epoch end the plan is checked against the pace the last epoch really had (evaluation and
checkpoint included) and shortened if the machine became slower; it is never lengthened. The plan is checkpointed,
so a resumed run keeps it.

`TimeBudget` does the arithmetic; `FitTimeBudget` is the loop's callback that times the run and plans it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from .loop import Callback, Loop
from .report import format_duration

# Evaluation runs the forward pass only: about a third of a training step's work per image. 0.5 is on the safe side.
EVAL_COST = 0.5
SAFETY = 0.97        # plan to use 97% of the time left
FINAL_RESERVE_S = 2.0  # the final weights file, confusion matrix and summary


def parse_duration(text: str) -> float:
    """Seconds from '540', '540s', '9m', '9m30s', '1h', '1h5m'; ValueError for anything else or a non-positive
    or non-finite duration."""
    import re

    s = str(text).strip().lower()
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", s)
    if not s or m is None or not any(m.groups()):
        raise ValueError(f"expected a duration such as 540, 540s, 9m or 1h30m; got {text!r}")
    h, mi, sec = (float(g) if g else 0.0 for g in m.groups())
    total = h * 3600 + mi * 60 + sec
    if not math.isfinite(total) or total <= 0:
        raise ValueError(f"a duration must be > 0; got {text!r}")
    return total


class TimeBudget:
    """Plans `epochs` (at most `max_epochs`) to end `seconds` after `t_start` (perf_counter time)."""

    def __init__(self, seconds: float, t_start: float, steps_per_epoch: int, max_epochs: int, images_per_step: int,
                 eval_images: int, eval_every: int, warmup_steps: int) -> None:
        self.seconds, self.t_start = seconds, t_start
        self.steps_per_epoch, self.max_epochs = steps_per_epoch, max_epochs
        self.images_per_step, self.eval_images, self.eval_every = images_per_step, eval_images, eval_every
        # decide after a few timed steps, and before the warm-up ends where the run has enough steps for that
        self.probe_steps = max(4, min(30, steps_per_epoch // 10, max(warmup_steps - 1, 4)))
        self._t0: float | None = None
        self._n = 0
        self.step_s: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def epoch_estimate(self, step_s: float) -> float:
        """Seconds per epoch at `step_s` per step: the steps, plus its share of evaluation."""
        return self.steps_per_epoch * step_s + self.eval_s(step_s) / self.eval_every

    def eval_s(self, step_s: float) -> float:
        """Seconds one evaluation takes at `step_s` per training step (a forward pass per image)."""
        return self.eval_images * step_s / self.images_per_step * EVAL_COST

    def fit_steps(self, done: int, step_s: float, evals_done_s: float = 0.0) -> int:
        """The total optimizer steps (done ones included, at most max_epochs whole epochs) whose remaining steps
        and evaluations (one every `eval_every` epochs and one at the end) fit in the time left."""
        left = self.seconds * SAFETY - self.elapsed() - FINAL_RESERVE_S - evals_done_s
        spe, most = self.steps_per_epoch, self.max_epochs * self.steps_per_epoch
        total = min(most, done + math.floor(max(left, 0.0) / step_s))
        while total > done + 1:
            epochs_left = math.ceil(total / spe) - done // spe
            evals = math.ceil(epochs_left / self.eval_every) + 1
            if (total - done) * step_s + evals * self.eval_s(step_s) <= left:
                break
            total -= max(1, spe // 20)
        return max(total, done + 1)

    def after_step(self, done: int) -> int | None:
        """Call after each optimizer step (`done` steps taken so far) until it returns the total steps that fit
        (then stop calling)."""
        now = time.perf_counter()
        self._n += 1
        if self._n == 2:
            self._t0 = now
            return None
        if self._n < self.probe_steps + 2 or self._t0 is None:
            return None
        self.step_s = (now - self._t0) / (self._n - 2)
        return self.fit_steps(done, self.step_s)

    def refit(self, done: int, planned: int, step_s: float) -> int:
        """At an epoch end: the planned total steps, shortened (never lengthened) if the rest no longer fits at
        `step_s` per step (the last epoch's pace, its evaluation included)."""
        return min(planned, max(done, self.fit_steps(done, step_s)))


class FitTimeBudget(Callback):
    """Fits the run's planned steps to `seconds` counted from `t_start` (perf_counter time), at most the loop's
    plan at the start (--epochs): once after the first timed steps (or after the first epoch, when it is too short
    to time step by step), then shortened at each epoch end if the pace (evaluation included) fell. `log` and
    `warn` say what was decided. Its state is whether the plan was made: a resumed run keeps the checkpointed plan
    and fits no more (its clock started again)."""

    name = "time_budget"

    def __init__(self, seconds: float, t_start: float, images_per_step: int, eval_images: int, eval_every: int,
                 log: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> None:
        self.seconds, self.t_start = seconds, t_start
        self.images_per_step, self.eval_images, self.eval_every = images_per_step, eval_images, eval_every
        self.log, self.warn = log, warn
        self.fitted = False
        self.budget: TimeBudget | None = None   # None once fitted in an earlier process: nothing left to do

    def state_dict(self) -> dict[str, Any]:
        return dict(fitted=self.fitted)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fitted = bool(state["fitted"])

    def on_fit_start(self, loop: Loop) -> None:
        self.max_steps = loop.total_steps
        if not self.fitted:
            self.budget = TimeBudget(self.seconds, self.t_start, loop.steps_per_epoch, loop.epochs,
                                     self.images_per_step, self.eval_images, self.eval_every,
                                     loop.schedule.warmup_steps)

    def on_epoch_start(self, loop: Loop) -> None:
        self.t_epoch = time.perf_counter()

    def on_step_end(self, loop: Loop) -> None:
        b = self.budget
        if b is not None and not self.fitted:
            total = b.after_step(loop.global_step)
            if total is not None:
                self._plan(loop, total, f"{b.images_per_step / b.step_s:.0f} img/s over steps 3-{b.probe_steps + 2}")

    def on_validation(self, loop: Loop, record: dict[str, Any]) -> None:
        """An epoch too short to time step by step: fit from the epoch's pace (before its evaluation is due)."""
        b = self.budget
        if b is not None and not self.fitted:
            epoch_time = record["epoch_time_s"]
            b.step_s = epoch_time / max(loop.global_step - (loop.resumed_from or 0), 1)
            speed = f"{loop.epoch_samples / max(epoch_time, 1e-9):.0f} img/s over epoch {loop.epoch}"
            self._plan(loop, b.fit_steps(loop.global_step, b.step_s), speed)

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        """Shorten the plan when the epoch's pace, its evaluation included, no longer fits it."""
        if self.budget is None or not self.fitted or loop.epoch >= loop.epochs:
            return
        pace = (time.perf_counter() - self.t_epoch) / max(loop.global_step - (loop.epoch - 1) * loop.steps_per_epoch, 1)
        fitted = self.budget.refit(loop.global_step, loop.total_steps, pace)
        if fitted < loop.total_steps:
            self.warn(f"the machine got slower: {fitted} steps fit in the time budget instead of {loop.total_steps}; "
                      "the schedule ends there")
            loop.set_total_steps(fitted)

    def _plan(self, loop: Loop, total_steps: int, speed: str) -> None:
        """Fix the run's length to what fits (at most the plan it started with) and say why."""
        b = self.budget
        self.fitted = True
        loop.set_total_steps(max(1, min(total_steps, self.max_steps)))
        self.log(f"time budget {format_duration(b.seconds)}: measured {speed}, "
                 f"~{format_duration(b.epoch_estimate(b.step_s))} per epoch with evaluation; "
                 f"{loop.total_steps / loop.steps_per_epoch:.2f} of at most {b.max_epochs} epochs "
                 f"({loop.total_steps} steps) fit ({format_duration(b.elapsed())} used so far)")
