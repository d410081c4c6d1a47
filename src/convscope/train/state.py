"""How a checkpoint saves a run in progress and a resume puts it back: the model and optimizer, the loop's
position and plan, every callback's state, and the random generators.

The random generators are not the loop's: the model's own randomness (stochastic depth, dropout) draws from
torch's global generator, so a checkpoint gathers every rank's torch (and CUDA) generator state, with numpy's and
python's, and a resume sets them again. Batches need none of them (they are seeded by their position).
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.loaders import Loader
from .checkpoint import CheckpointManager, TrainingCheckpoint, rng_state_json, set_rng_state_json
from .distributed import DistInfo, all_gather_tensors
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


def save_checkpoint(loop: Loop, manager: CheckpointManager, meta: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None) -> Path | None:
    """Checkpoint the run at the loop's position (with `extra` JSON, e.g. the run's config in state.json).
    Every rank must call it; rank 0 writes and returns the checkpoint's directory."""
    rng = _gather_rng(loop.dist)   # a collective: every rank takes part
    if not loop.dist.is_main:
        return None
    with loop.timer("checkpoint"):
        order = _order_digest(loop.train_loader, loop.epoch) if loop.epoch < loop.epochs else None
        callbacks, tensors = {}, {}
        for cb in loop.callbacks:
            state = cb.state_dict()
            callbacks[cb.name] = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
            found = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            if found:
                tensors[cb.name] = found
        state = dict(loop.state_dict(), data=dict(data_description(loop), epoch_order=order), rng=rng_state_json(),
                     callbacks=callbacks, **(extra or {}))
        return manager.save(loop.global_step, model=loop.model.state_dict(), optimizer=loop.optimizer.state_dict(),
                            state=state, meta=dict(meta, epoch=loop.epoch, step=loop.global_step), rng=rng,
                            tensors=tensors)


def restore_checkpoint(loop: Loop, ck: TrainingCheckpoint) -> None:
    """Put a checkpoint back into `loop`: weights, optimizer, plan, position, every callback's state and every
    generator. ValueError when the data differ from the checkpoint's, or the callbacks with state (a callback
    without state may come or go)."""
    data = data_description(loop)
    if ck.state["data"] != dict(data, epoch_order=ck.state["data"]["epoch_order"]):
        raise ValueError(f"the data differs from the checkpoint's: {ck.state['data']} vs {data}")
    saved = {n: dict(js, **ck.tensors.get(n, {})) for n, js in ck.state["callbacks"].items()}
    names = {cb.name for cb in loop.callbacks}
    lost = sorted(n for n, st in saved.items() if st and n not in names)
    missing = sorted(cb.name for cb in loop.callbacks if cb.name not in saved and cb.state_dict())
    if lost or missing:
        raise ValueError(f"the callbacks differ from the checkpoint's ({ck.path}): "
                         + "; ".join([f"this run has no {lost} to take their state"] * bool(lost)
                                     + [f"it holds no state for {missing}"] * bool(missing)))
    loop.load_state_dict(ck.state)
    loop.model.load_state_dict(ck.model)
    loop.optimizer.load_state_dict(ck.optimizer)
    for cb in loop.callbacks:
        if cb.name in saved:
            cb.load_state_dict(saved[cb.name])
    if loop.epoch < loop.epochs and ck.state["data"]["epoch_order"] != _order_digest(loop.train_loader, loop.epoch):
        raise ValueError("the training data order differs from the checkpoint's (did the dataset change?)")
    torch.set_rng_state(ck.rng[f"torch.rank{loop.dist.rank}"])
    if loop.device.type == "cuda":
        torch.cuda.set_rng_state(ck.rng[f"cuda.rank{loop.dist.rank}"], loop.device)
    set_rng_state_json(ck.state["rng"])
