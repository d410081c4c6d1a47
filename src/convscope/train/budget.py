"""`--time-budget`: fit the number of epochs to the speed this machine shows during the run.

Nothing is guessed from the CPU's name: the first steps of the run are timed (after two warm-up steps), and the
optimizer steps that fit in what is left of the budget (evaluations included) are planned from that speed, before
the learning-rate warm-up ends where the run is long enough, so the cosine schedule is the one a run planned with
that many steps would have had. The plan is in steps, so the last epoch may be a partial one (at most --epochs
whole epochs). At every epoch end the plan is checked against the pace the last epoch really had (evaluation and
checkpoint included) and shortened if the machine became slower; it is never lengthened. The plan is checkpointed,
so a resumed run keeps it.
"""
from __future__ import annotations

import math
import time

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
