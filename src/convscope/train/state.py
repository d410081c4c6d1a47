"""How a checkpoint saves a run in progress and a resume puts it back: the model and optimizer, the loop's
position and plan, every callback's state, and the random generators.

The random generators are not the loop's: the model's own randomness (stochastic depth, dropout) draws from
torch's global generator, so a checkpoint gathers every rank's torch (and CUDA) generator state, with numpy's and
python's, and a resume sets them again. Batches need none of them (they are seeded by their position).

A checkpoint may resume on another number of processes (torchrun restarted with fewer or more) when the global
batch (batch size x accum steps x processes) and so the steps per epoch stay the same. The data position maps
by itself: an epoch's permutation is the same for every number of processes W and rank r takes its positions
r, r + W, ... (data/loaders.py), so after k optimizer steps every rank has skipped k x accum x batch size of its
own positions and together they skip the first k x global batch, whatever W is. The epoch's loss so far is saved
as the sum over every rank. A rank the checkpoint holds no generator state for seeds torch from (seed, epoch,
step, rank). Weights then equal an uninterrupted run's to float rounding only, and only without randomness in the
model or the augmentation: the gradients are summed over another number of processes, in another order, and
each batch's random transforms are seeded by the rank that loads it.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.loaders import Loader, ResumableDistributedSampler, batch_seed
from .checkpoint import CheckpointManager, TrainingCheckpoint, rng_state_json, set_rng_state_json
from .distributed import DistInfo, all_gather_tensors, all_reduce_sum
from .loop import Loop


def seed_all(seed: int) -> None:
    """Seed torch's, numpy's and python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def data_description(loop: Loop) -> dict[str, Any]:
    """What the training data order depends on; a resume checks it against the checkpoint's."""
    loader = loop.train_loader
    return dict(train_size=len(loader.dataset), world_size=loop.dist.world_size,
                batch_size=loader.batch_sampler.batch_size, accum_steps=loop.accum_steps,
                steps_per_epoch=loop.steps_per_epoch,
                order="DistributedSampler permutation seeded by seed + epoch; batch transforms seeded by "
                      "(seed, epoch, step, rank)")


def _order_digest(loader: Loader, epoch: int, world_size: int) -> str:
    """A fingerprint of rank 0's sample order in `epoch` on `world_size` processes (checked on resume)."""
    seed = loader.batch_sampler.sampler.seed
    sampler = ResumableDistributedSampler(loader.dataset, world_size, 0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return hashlib.sha1(np.asarray(list(iter(sampler)), dtype=np.int64).tobytes()).hexdigest()[:16]


def _global_batch(data: Mapping[str, Any]) -> int:
    return data["batch_size"] * data["accum_steps"] * data["world_size"]


def _data_mismatch(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """Why this run cannot continue the checkpoint's data position (None when it can): the data set, the global
    batch and the steps per epoch must be the checkpoint's; the number of processes may change."""
    want, got = _global_batch(saved), _global_batch(now)
    if want != got:
        per, rest = divmod(want, now["accum_steps"] * now["world_size"])
        hint = f"--batch-size {per}" if per and not rest else "a --batch-size and --accum-steps that make it"
        return (f"the global batch (batch size x accum steps x processes) must stay the checkpoint's {want}; "
                f"this run has {now['batch_size']} x {now['accum_steps']} x {now['world_size']} = {got}: pass "
                f"{hint}")
    diff = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in ("train_size", "steps_per_epoch", "order")
            if saved[k] != now[k]]
    return f"the data differs from the checkpoint's: {'; '.join(diff)}" if diff else None


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


def save_checkpoint(loop: Loop, manager: CheckpointManager, meta: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None) -> Path | None:
    """Checkpoint the run at the loop's position (with `extra` JSON, e.g. the run's config in state.json).
    Every rank must call it; rank 0 writes and returns the checkpoint's directory."""
    rng = _gather_rng(loop.dist)   # collectives: every rank takes part
    loss = all_reduce_sum(torch.stack([loop.loss_sum.double(), torch.tensor(float(loop.seen), dtype=torch.float64,
                                                                            device=loop.device)]), loop.dist)
    if not loop.dist.is_main:
        return None
    with loop.timer("checkpoint"):
        world = loop.dist.world_size
        order = _order_digest(loop.train_loader, loop.epoch, world) if loop.epoch < loop.epochs else None
        callbacks, tensors = {}, {}
        for cb in loop.callbacks:
            state = cb.state_dict()
            callbacks[cb.name] = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
            found = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            if found:
                tensors[cb.name] = found
        state = dict(loop.state_dict(), epoch_loss_sum=float(loss[0]), epoch_seen=int(loss[1]),
                     data=dict(data_description(loop), epoch_order=order), rng=rng_state_json(), callbacks=callbacks,
                     **(extra or {}))
        return manager.save(loop.global_step, model=loop.model.state_dict(), optimizer=loop.optimizer.state_dict(),
                            state=state, meta=dict(meta, epoch=loop.epoch, step=loop.global_step), rng=rng,
                            tensors=tensors)


def _weights_misfit(own: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor], show: int = 3) -> str:
    """'' when `saved` has exactly `own`'s names and shapes; else what differs, the first `show` names of each."""
    def first(names: list[str]) -> str:
        return ", ".join(names[:show]) + (f" and {len(names) - show} more" if len(names) > show else "")

    missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = sorted(k for k in set(own) & set(saved) if tuple(own[k].shape) != tuple(saved[k].shape))
    moved = [f"{k} {tuple(saved[k].shape)} (model {tuple(own[k].shape)})" for k in shapes]
    parts = [f"it lacks {first(missing)}"] * bool(missing) + [f"it has no place for {first(extra)}"] * bool(extra)
    return "; ".join(parts + [f"other shapes for {first(moved)}"] * bool(moved))


def restore_checkpoint(loop: Loop, ck: TrainingCheckpoint) -> None:
    """Put a checkpoint back into `loop`: weights, optimizer, plan, position, every callback's state and every
    generator. ValueError when the data or the global batch differ from the checkpoint's, or the callbacks with
    state (a callback without state may come or go), or the weights' names or shapes (checked before anything is
    restored)."""
    mismatch = _data_mismatch(ck.state["data"], data_description(loop))
    if mismatch:
        raise ValueError(mismatch)
    saved = {n: dict(js, **ck.tensors.get(n, {})) for n, js in ck.state["callbacks"].items()}
    names = {cb.name for cb in loop.callbacks}
    lost = sorted(n for n, st in saved.items() if st and n not in names)
    missing = sorted(cb.name for cb in loop.callbacks if cb.name not in saved and cb.state_dict())
    if lost or missing:
        raise ValueError(f"the callbacks differ from the checkpoint's ({ck.path}): "
                         + "; ".join([f"this run has no {lost} to take their state"] * bool(lost)
                                     + [f"it holds no state for {missing}"] * bool(missing)))
    misfit = _weights_misfit(loop.model.state_dict(), ck.model)
    if misfit:
        raise ValueError(f"the checkpoint's weights ({ck.path}) do not fit this run's model: {misfit} (was it written "
                         "by another model, or by a convscope version that built this one differently?)")
    loop.load_state_dict(ck.state)
    if not loop.dist.is_main:   # the checkpoint's loss so far is every rank's: rank 0 carries it
        loop.loss_sum, loop.seen = torch.zeros_like(loop.loss_sum), 0
    loop.model.load_state_dict(ck.model)
    loop.optimizer.load_state_dict(ck.optimizer)
    for cb in loop.callbacks:
        if cb.name in saved:
            cb.load_state_dict(saved[cb.name])
    saved_world = ck.state["data"]["world_size"]
    if loop.epoch < loop.epochs and ck.state["data"]["epoch_order"] != _order_digest(loop.train_loader, loop.epoch,
                                                                                     saved_world):
        raise ValueError("the training data order differs from the checkpoint's (did the dataset change?)")
    _restore_rng(loop, ck.rng)
    set_rng_state_json(ck.state["rng"])


def _restore_rng(loop: Loop, rng: Mapping[str, torch.Tensor]) -> None:
    """This rank's torch (and CUDA) generator from the checkpoint; a rank it has none for (the run grew) seeds
    them from (seed, epoch, step, rank)."""
    rank = loop.dist.rank
    if f"torch.rank{rank}" not in rng:
        seed = batch_seed(loop.train_loader.batch_sampler.sampler.seed, loop.epoch, loop.global_step, rank)
        torch.manual_seed(seed)   # seeds CUDA's generators too
        return
    torch.set_rng_state(rng[f"torch.rank{rank}"])
    if loop.device.type == "cuda":
        torch.cuda.set_rng_state(rng[f"cuda.rank{rank}"], loop.device)
