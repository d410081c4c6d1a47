"""The training loop with plug-ins: events in order, callback state through checkpoints, stop requests, and a
second task (per-pixel regression, lower-is-better score) trained, checkpointed and resumed bit for bit by the
same loop and callbacks as classification."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from convscope.data.datasets import TensorImageDataset
from convscope.data.loaders import Loader
from convscope.data.transforms import EvalTransform, TrainTransform
from convscope.models.source import read_meta
from convscope.train.budget import FitTimeBudget
from convscope.train.callbacks import EMA, Checkpointing, Evaluation, Metrics
from convscope.train.checkpoint import CheckpointManager
from convscope.train.loop import Callback, Loop
from convscope.train.recipe import WarmupCosine
from convscope.train.report import format_duration
from convscope.train.state import restore_checkpoint, save_checkpoint, seed_all

META = dict(model="pixel_toy", num_classes=1, in_chans=1, input_size=[8, 8], load_size=[8, 8], crop_pct=1.0,
            mean=[0.5], std=[0.25], class_names=["pixel"])
STEPS_PER_EPOCH, EPOCHS = 4, 3   # 32 images, batches of 4, 2 accumulated per step


# -- a second task: per-pixel regression -------------------------------------------------------------------------
def _target(x: torch.Tensor) -> torch.Tensor:
    """Each pixel's right neighbour (the image rolled by one column), halved."""
    return 0.5 * x.roll(1, dims=-1)


class PixelErrors:
    """Mean squared and mean absolute per-pixel error; lower is better."""

    primary, higher_is_better = "mse", False
    labels = {"mse": "mse", "mae": "mae"}
    fmt, axis = "{:.4f}", "error"

    def reset(self) -> None:
        self.se, self.ae, self.n = 0.0, 0.0, 0

    def update(self, outputs: torch.Tensor, batch: torch.Tensor) -> None:
        err = outputs.float() - _target(batch)
        self.se += float(err.square().sum())
        self.ae += float(err.abs().sum())
        self.n += err.numel()

    def compute(self) -> dict:
        return dict(mse=self.se / max(self.n, 1), mae=self.ae / max(self.n, 1), n=self.n)

    def files(self, scores) -> dict:
        return {"errors.json": dict(mse=scores["mse"], pixels=scores["n"])}


class PixelTask:
    """Batches are images alone (the loader's labels are dropped); the loss is MSE to `_target`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = self.train_module = model
        self.metrics = PixelErrors()

    def to_device(self, batch):
        return batch[0]

    def batch_size(self, batch) -> int:
        return batch.shape[0]

    def loss(self, module, batch):
        out = module(batch)
        return F.mse_loss(out, _target(batch)), out

    def predict(self, model, batch):
        return model(batch)


class Recorder(Callback):
    """Counts its steps (JSON state) and sums the loop's running loss (tensor state); logs the events it sees."""

    def __init__(self, name: str = "recorder", log: list | None = None) -> None:
        self.name, self.log = name, log if log is not None else []
        self.steps, self.trace = 0, torch.zeros((), dtype=torch.float64)

    def state_dict(self) -> dict:
        return dict(steps=self.steps, trace=self.trace.clone())

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.trace = state["steps"], state["trace"]

    def _log(self, loop: Loop, event: str) -> None:
        self.log.append((self.name, event, loop.global_step))

    def on_fit_start(self, loop: Loop) -> None:
        self._log(loop, "on_fit_start")

    def on_epoch_start(self, loop: Loop) -> None:
        self._log(loop, "on_epoch_start")

    def on_step_end(self, loop: Loop) -> None:
        self.steps += 1
        self.trace += loop.loss_sum
        self._log(loop, "on_step_end")

    def on_validation(self, loop: Loop, record: dict) -> None:
        self._log(loop, "on_validation")

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        self._log(loop, "on_epoch_end")

    def on_fit_end(self, loop: Loop) -> None:
        self._log(loop, "on_fit_end")


class CrashAt(Callback):
    """Raises at step `step`, as a killed process would stop there."""

    name = "crash"

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, loop: Loop) -> None:
        if loop.global_step == self.step:
            raise KeyboardInterrupt


class StopAt(Callback):
    name = "stop"

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, loop: Loop) -> None:
        if loop.global_step == self.step:
            loop.request_stop()


def _loaders() -> tuple[Loader, Loader]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
    train = TensorImageDataset(images[:32], torch.zeros(32), ("pixel",))
    test = TensorImageDataset(images[32:], torch.zeros(8), ("pixel",))
    tf = TrainTransform(8, (0.5,), (0.25,), scale=(0.5, 1.0), hflip=0.5)   # random crops and flips, seeded
    return (Loader(train, tf, 4, train=True, seed=3),
            Loader(test, EvalTransform(8, (0.5,), (0.25,)), 4, train=False))


def _loop(out: Path, *extra: Callback, every: int = 3) -> tuple[Loop, dict]:
    """The toy run: dropout (the global generator), AdamW, warm-up + cosine, accumulation, clipping, EMA,
    evaluation of model and EMA, checkpoints every `every` steps, metric files; `extra` callbacks last."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GELU(), nn.Dropout(0.2), nn.Conv2d(8, 1, 3, padding=1))
    task = PixelTask(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = WarmupCosine(opt, 1e-2, 1e-4, 2, EPOCHS * STEPS_PER_EPOCH)
    train_loader, eval_loader = _loaders()
    ema = EMA(model, 0.8)
    evaluation = Evaluation(task, eval_loader, {"": model, "ema": ema.module})
    manager = CheckpointManager(out / "checkpoints", keep_last=20)
    checkpointing = Checkpointing(manager, evaluation, ema.module, "ema", META, every=every)
    metrics = Metrics(out, evaluation, plot=False)
    cbs = dict(ema=ema, evaluation=evaluation, checkpointing=checkpointing, metrics=metrics)
    loop = Loop(task, opt, schedule, train_loader, callbacks=[*cbs.values(), *extra], accum_steps=2, clip_grad=0.5)
    return loop, cbs


def _bytes(path: Path) -> dict[str, bytes]:
    return {k: v.numpy().tobytes() for k, v in load_file(str(path)).items()}


def _history(out: Path) -> list[dict]:
    timing = ("train_img_per_s", "epoch_time_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_callbacks_are_called_at_each_event_in_their_order(tmp_path):
    log: list = []
    loop, _ = _loop(tmp_path, Recorder("a", log), Recorder("b", log), every=0)
    seed_all(1)
    loop.fit()
    events = [(event, step) for name, event, step in log if name == "a"]

    def per_epoch(e):
        return [("on_epoch_start", 4 * e)] + [("on_step_end", 4 * e + i) for i in (1, 2, 3, 4)] + [
            ("on_validation", 4 * e + 4), ("on_epoch_end", 4 * e + 4)]
    assert events == [("on_fit_start", 0), *per_epoch(0), *per_epoch(1), *per_epoch(2), ("on_fit_end", 12)]
    assert [name for name, _, _ in log] == ["a", "b"] * len(events)   # every event: a, then b


def test_callback_state_survives_a_checkpoint_round_trip(tmp_path):
    loop, cbs = _loop(tmp_path, Recorder(), every=0)
    seed_all(1)
    loop.fit()
    recorder = loop.callbacks[-1]
    path = save_checkpoint(loop, cbs["checkpointing"].manager, META)
    assert sorted(p.name for p in path.iterdir()) == ["ema.safetensors", "model.safetensors", "optimizer.safetensors",
                                                      "recorder.safetensors", "rng.safetensors", "state.json"]
    twin, twin_cbs = _loop(tmp_path / "twin", Recorder(), every=0)
    restore_checkpoint(twin, cbs["checkpointing"].manager.load(path))
    again = twin.callbacks[-1]
    assert again.steps == recorder.steps == 12 and torch.equal(again.trace, recorder.trace) and recorder.trace > 0
    assert twin_cbs["checkpointing"].best == cbs["checkpointing"].best and cbs["checkpointing"].best["epoch"]
    assert twin_cbs["metrics"].history == cbs["metrics"].history and len(cbs["metrics"].history) == EPOCHS
    assert all(torch.equal(a, b) for a, b in zip(twin_cbs["ema"].module.state_dict().values(),
                                                  cbs["ema"].module.state_dict().values(), strict=True))
    assert (twin.global_step, twin.epoch, twin.resumed_from) == (12, 3, 12)
    # a checkpoint whose stateful callback this run lacks is refused: its state would be lost
    bare, _ = _loop(tmp_path / "bare", every=0)
    with pytest.raises(ValueError, match=r"this run has no \['recorder'\]"):
        restore_checkpoint(bare, cbs["checkpointing"].manager.load(path))


def test_a_checkpoint_whose_weights_do_not_fit_is_refused_before_anything_is_restored(tmp_path):
    loop, cbs = _loop(tmp_path, every=0)
    seed_all(1)
    loop.fit()
    manager = cbs["checkpointing"].manager
    path = save_checkpoint(loop, manager, META)
    fits, _ = _loop(tmp_path / "fits", every=0)
    restore_checkpoint(fits, manager.load(path))   # the untouched checkpoint restores
    assert fits.global_step == 12
    cases = {   # what is done to the saved weights -> what the refusal says
        "renamed": (lambda m: m.update({"9.weight": m.pop("0.weight")}),
                    r"it lacks 0\.weight; it has no place for 9\.weight"),
        "reshaped": (lambda m: m.update({"3.bias": torch.zeros(2)}),
                     r"other shapes for 3\.bias \(2,\) \(model \(1,\)\)"),
    }
    for case, (change, says) in cases.items():
        ck = manager.load(path)
        change(ck.model)
        fresh, _ = _loop(tmp_path / case, every=0)
        before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
        with pytest.raises(ValueError, match="do not fit this run's model: " + says):
            restore_checkpoint(fresh, ck)
        assert (fresh.global_step, fresh.epoch) == (0, 0)
        assert all(torch.equal(v, before[k]) for k, v in fresh.model.state_dict().items())


@pytest.mark.parametrize("stop", [1, 3])   # 1: inside the warm-up (2 steps), which the stop shortens
def test_stop_request_ends_the_run_after_that_step(tmp_path, stop):
    loop, cbs = _loop(tmp_path, StopAt(stop), every=3)
    seed_all(1)
    loop.fit()
    assert (loop.global_step, loop.epochs, loop.total_steps) == (stop, 1, stop)
    history = cbs["metrics"].history
    assert [h["step"] for h in history] == [stop] and "mse" in history[0] and "ema_mse" in history[0]
    assert read_meta(tmp_path / "last.safetensors", registered=False)["epoch"] == 1
    assert [p.name for p in cbs["checkpointing"].manager.list()] == [f"step-{stop:08d}"]
    state = json.loads((tmp_path / "checkpoints" / f"step-{stop:08d}" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["epochs"]) == (1, 0, 1)   # the stop is the plan
    resumed, _ = _loop(tmp_path, every=3)
    restore_checkpoint(resumed, cbs["checkpointing"].manager.load())   # the shortened warm-up is put back too
    resumed.fit()
    assert resumed.global_step == stop and resumed.total_steps == stop


def test_a_second_task_trains_checkpoints_and_resumes_bit_for_bit(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref, ref_cbs = _loop(ref_dir, Recorder())
    seed_all(1)
    ref.fit()
    history = _history(ref_dir)
    assert [h["step"] for h in history] == [4, 8, 12] and history[-1]["train_loss"] < history[0]["train_loss"]
    mses = [h["ema_mse"] for h in history]   # best.safetensors holds the EMA's weights: the lowest EMA mse
    assert read_meta(ref_dir / "best.safetensors", registered=False)["epoch"] == mses.index(min(mses)) + 1
    assert json.loads((ref_dir / "errors.json").read_text())["pixels"] == 8 * 64

    killed, _ = _loop(run_dir, Recorder(), CrashAt(7))
    seed_all(1)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    manager = CheckpointManager(run_dir / "checkpoints")
    assert [p.name for p in manager.list()] == ["step-00000003", "step-00000004", "step-00000006"]
    resumed, resumed_cbs = _loop(run_dir, Recorder())
    restore_checkpoint(resumed, manager.load_newest_intact())
    assert (resumed.epoch, resumed.step_in_epoch) == (1, 2)   # mid-epoch
    resumed.fit()

    for name in ("last.safetensors", "best.safetensors", "checkpoints/step-00000012/model.safetensors",
                 "checkpoints/step-00000012/ema.safetensors", "checkpoints/step-00000012/optimizer.safetensors",
                 "checkpoints/step-00000012/recorder.safetensors", "checkpoints/step-00000012/rng.safetensors"):
        a, b = _bytes(ref_dir / name), _bytes(run_dir / name)
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), name
    assert _history(run_dir) == history
    assert resumed.callbacks[-1].steps == ref.callbacks[-1].steps == 12
    assert resumed_cbs["evaluation"].final == ref_cbs["evaluation"].final


def test_sub_second_durations_are_not_rounded_to_zero():
    assert [format_duration(s) for s in (0.5, 0.042, 2.34, 9.96, 12, 59.4, 61, 3725)] == \
        ["0.5s", "0.042s", "2.3s", "10s", "12s", "59s", "1m01s", "1h02m05s"]


def test_time_budget_plans_the_second_task_and_names_a_sub_second_budget(tmp_path):
    """0.5 s is spent before the first epoch ends (too short to time step by step): the plan is one step more,
    inside epoch 2, and the line says 0.5s (it said 0s)."""
    lines: list[str] = []
    budget = FitTimeBudget(0.5, time.perf_counter(), 8, 8, 1, log=lines.append, warn=lines.append)
    loop, cbs = _loop(tmp_path, budget, every=0)
    seed_all(1)
    loop.fit()
    assert len(lines) == 1 and lines[0].startswith("time budget 0.5s: measured ") and "(5 steps) fit" in lines[0]
    assert [h["step"] for h in cbs["metrics"].history] == [4, 5] and loop.total_steps == 5
    state = json.loads((tmp_path / "checkpoints" / "step-00000005" / "state.json").read_text())
    assert state["callbacks"]["time_budget"] == {"fitted": True} and state["schedule"]["total_steps"] == 5
