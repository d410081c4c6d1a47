"""What a run shows and leaves behind: progress on the console, metrics.jsonl, curves.png, phase timers."""
from __future__ import annotations

import io
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from ..files import atomic_write_bytes, atomic_write_text


class PhaseTimer:
    """Wall time spent per phase (data, forward, backward, optimizer, eval, checkpoint). On CUDA each phase ends
    with a synchronisation so the time lands in the phase that caused it."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.totals[phase] += time.perf_counter() - t0

    def summary(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.totals.items()}


def format_duration(seconds: float) -> str:
    """'1h02m03s', '2m03s', '12s'; under 10 s to a tenth ('2.5s'), under 0.1 s to two digits ('0.042s'), so that a
    short duration never reads as 0s."""
    if seconds < 9.95:
        text = f"{seconds:.1f}" if seconds >= 0.095 or seconds <= 0 else f"{seconds:.2g}"
        return text.removesuffix(".0") + "s"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def write_metrics(path: str | Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl: one JSON object per epoch, the whole history rewritten atomically each time (so a resumed
    run's file holds exactly the epochs of its checkpointed history)."""
    import json

    atomic_write_text(path, "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in history))


def strict_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, +-Infinity, which JSON cannot hold) replaced by None."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


ACCURACY = {"top1": "top-1", "top5": "top-5"}


def curves_figure(history: list[dict[str, Any]], title: str = "", scores: Mapping[str, str] = ACCURACY,
                  axis: str = "accuracy (%)", dashed: Mapping[str, str] | None = None) -> Figure:
    """Loss and scores per epoch as a matplotlib Figure (Agg canvas, no pyplot state): `scores` maps the
    records' keys to the legend, `dashed` too for scores drawn dashed (an EMA's, default: ema_top1 as "EMA
    top-1"). Epoch ticks are whole numbers; a percentage axis ('%' in `axis`) never reaches above 100."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    dashed = {"ema_top1": "EMA top-1"} if dashed is None else dashed
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), layout="tight")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ev = [r for r in history if "eval_loss" in r]
    if ev:
        ax1.plot([r["epoch"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="eval")
    for keys, style in ((scores, "o-"), (dashed, "o--")):
        for key, label in keys.items():
            if any(key in r for r in ev):
                ax2.plot([r["epoch"] for r in ev if key in r], [r[key] for r in ev if key in r], style, label=label)
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel=axis, title=axis.split(" (")[0])
    if "%" in axis:
        lo, hi = ax2.get_ylim()
        ax2.set_ylim(max(lo, 0.0), min(hi, 100.0))
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:   # no evaluated epoch yet: nothing to label on the accuracy axes
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(path: str | Path, history: list[dict[str, Any]], title: str = "",
                scores: Mapping[str, str] = ACCURACY, axis: str = "accuracy (%)",
                dashed: Mapping[str, str] | None = None) -> None:
    """`curves_figure(...)` written to `path` as a PNG (atomically)."""
    fig = curves_figure(history, title, scores, axis, dashed)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def _same_terminal() -> bool:
    """Whether stdout and stderr are the same terminal (so that a warning printed above the bars reaches stderr's
    reader too)."""
    import os

    try:
        return sys.stdout.isatty() and sys.stderr.isatty() and os.path.samestat(os.fstat(sys.stdout.fileno()),
                                                                                 os.fstat(sys.stderr.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


SHOWN = (("top1", "top-1 {:.2f}%"), ("top5", "top-5 {:.2f}%"), ("ema_top1", "EMA top-1 {:.2f}%"))


class Console:
    """Progress output of the main process.

    mode "bar": rich progress bars (run and epoch) with loss, img/s, elapsed time and ETA; "plain": one line
    per epoch; "none": nothing. "auto" picks bars on a terminal and plain lines otherwise.
    """

    def __init__(self, mode: str = "auto", enabled: bool = True) -> None:
        from ..extras import available, missing_message

        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() and available("rich") else "plain"
        if mode == "bar" and enabled and not available("rich"):
            print(f"convscope: warning: {missing_message('rich', 'the progress bar')}; printing one line per epoch",
                  file=sys.stderr, flush=True)
            mode = "plain"
        self.mode = mode if enabled else "none"
        self.progress = None
        self._last_refresh = 0.0

    def log(self, msg: str) -> None:
        if self.mode == "none":
            return
        if self.progress is not None:
            self.progress.console.print(msg, markup=False, highlight=False)
        else:
            print(msg, flush=True)

    def warn(self, msg: str) -> None:
        """Warnings go to stderr whatever the mode (above the bars when stderr is the bars' terminal)."""
        if self.progress is not None and _same_terminal():
            self.progress.console.print(f"convscope: warning: {msg}", markup=False, highlight=False)
        else:
            print(f"convscope: warning: {msg}", file=sys.stderr, flush=True)

    def start(self, total_steps: int, done_steps: int) -> None:
        if self.mode != "bar":
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), redirect_stderr=False)
        self.progress.start()
        self.run_task = self.progress.add_task("run", total=total_steps, completed=done_steps, info="")
        self.epoch_task = None

    def epoch_start(self, epoch: int, epochs: int, steps: int, start_step: int) -> None:
        self._epoch_t0 = time.perf_counter()
        self._epoch_images = 0
        if self.progress is not None:
            if self.epoch_task is not None:
                self.progress.remove_task(self.epoch_task)
            self.epoch_task = self.progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps,
                                                     completed=start_step, info="")

    def step(self, images: int, loss: Callable[[], float]) -> None:
        self._epoch_images += images
        if self.progress is None:
            return
        self.progress.advance(self.run_task)
        now = time.perf_counter()
        if now - self._last_refresh < 0.5:
            self.progress.advance(self.epoch_task)
            return
        self._last_refresh = now
        ips = self._epoch_images / max(now - self._epoch_t0, 1e-9)
        self.progress.update(self.epoch_task, advance=1, info=f"loss {loss():.4f}  {ips:7.0f} img/s")

    def epoch_end(self, record: dict[str, Any], eta_s: float | None,
                  shown: Sequence[tuple[str, str]] = SHOWN) -> None:
        """The epoch's line: loss, the `shown` scores the record has (key, format), lr, speed, time, ETA."""
        parts = [f"epoch {record['epoch']:>3}", f"loss {record['train_loss']:.4f}"]
        parts += [fmt.format(record[key]) for key, fmt in shown if key in record]
        parts += [f"lr {record['lr']:.2e}", f"{record['train_img_per_s']:.0f} img/s",
                  f"{record['epoch_time_s']:.1f} s"]
        if eta_s is not None:
            parts.append(f"ETA {format_duration(eta_s)}")
        self.log("  ".join(parts))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
