"""The batch loader: samplers, DDP sharding, worker processes, and batches as pure functions of their position.

The loader works in whole batches: its sampler yields `BatchRequest(epoch, step, indices)`, and the dataset side
gathers the images (`datasets.fetch_batch`) and runs the batch transforms with a generator seeded from
(seed, epoch, step, rank). A batch is therefore a pure function of its position in the run: worker count, worker
RNG and prefetching cannot change it, and a run resumed at step k sees exactly the batches an uninterrupted run
sees.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .datasets import fetch_batch


# -- batches as pure functions of (seed, epoch, step, rank) ------------------------------------------------------
class BatchRequest(NamedTuple):
    epoch: int
    step: int
    indices: tuple[int, ...]


def batch_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """A 63-bit seed for one batch's random transforms, from numpy's SeedSequence hash."""
    state = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (epoch-seeded permutation `seed + epoch`, rank r taking positions r, r + W, ...)
    that can start an epoch part-way through. With `num_replicas=1` it is a seeded shuffle."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])


class ShardSampler(Sampler[int]):
    """Evaluation order: rank r takes items r, r + W, ... in order, with no padding (no item counted twice)."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, n, num_replicas))
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.start = start

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices[self.start:])


class BatchRequestSampler(Sampler[BatchRequest]):
    """Groups an index sampler into `BatchRequest`s; `set_epoch(epoch, start_step)` resumes at a batch."""

    def __init__(self, sampler: ResumableDistributedSampler | ShardSampler, batch_size: int, drop_last: bool) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1; got {batch_size}")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step
        self.sampler.set_epoch(epoch, start_step * self.batch_size)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[BatchRequest]:
        batch, step = [], self.start_step
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield BatchRequest(self.epoch, step, tuple(batch))
                batch, step = [], step + 1
        if batch and not self.drop_last:
            yield BatchRequest(self.epoch, step, tuple(batch))


class BatchedDataset(Dataset):
    """Turns a `BatchRequest` into a ready batch `(images, targets, skipped paths)`: gather the uint8 images,
    run the batch transform and the optional mixer with generators seeded by `batch_seed`."""

    def __init__(self, dataset: Dataset, transform: Callable, mixer: Callable | None = None, seed: int = 0,
                 rank: int = 0) -> None:
        self.dataset, self.transform, self.mixer, self.seed, self.rank = dataset, transform, mixer, seed, rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, req: BatchRequest) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
        images, labels, skipped = fetch_batch(self.dataset, req.indices)
        if self.mixer is not None and images.shape[0] % 2:   # a skipped file left an odd batch: pairs need even
            images, labels = images[:-1], labels[:-1]
        s = batch_seed(self.seed, req.epoch, req.step, self.rank)
        x = self.transform(images, torch.Generator().manual_seed(s))
        if self.mixer is not None and x.shape[0]:
            x, labels = self.mixer(x, labels, np.random.default_rng(s))
        return x, labels, skipped


def _seed_worker(worker_id: int) -> None:
    """Give numpy and random in each worker a distinct seed (for user transforms; ours take explicit seeds)."""
    import random

    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class LoaderStats:
    skipped: list[str] = field(default_factory=list)


class Loader:
    """Batches of one dataset, epoch by epoch: `set_epoch(epoch, start_step)`, then iterate.

    train=True: shuffled (torch's DistributedSampler order, seeded by seed + epoch), last partial batch dropped.
    train=False: in order, sharded over ranks without padding, partial last batch kept.
    workers > 0 run the gather and the batch transforms in worker processes (persistent across epochs); the main
    process's global RNG is never touched (the DataLoader gets its own generator).
    """

    def __init__(self, dataset: Dataset, transform: Callable, batch_size: int, *, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0, mixer: Callable | None = None,
                 pin_memory: bool = False, prefetch_factor: int = 2) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0; got {workers}")
        if train:
            sampler = ResumableDistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=False)
        else:
            sampler = ShardSampler(len(dataset), world_size, rank)
        self.dataset = dataset
        self.batch_sampler = BatchRequestSampler(sampler, batch_size, drop_last=train)
        if train and len(self.batch_sampler) == 0:
            raise ValueError(f"the training set ({len(dataset)} images over {world_size} process(es)) is smaller "
                             f"than one batch of {batch_size}")
        self.batched = BatchedDataset(dataset, transform, mixer, seed, rank)
        self.stats = LoaderStats()
        extra = dict(persistent_workers=True, prefetch_factor=prefetch_factor,
                     worker_init_fn=_seed_worker) if workers > 0 else {}
        self.loader = DataLoader(self.batched, batch_size=None, sampler=self.batch_sampler, num_workers=workers,
                                 pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed), **extra)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch, start_step)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        it = iter(self.loader)
        while True:
            try:
                x, y, skipped = next(it)
            except StopIteration:
                return
            except Exception as e:
                # A worker's exception arrives with the worker traceback in its message: keep the last line.
                msg = str(e)
                if "Original Traceback" in msg:
                    last = msg.strip().splitlines()[-1].split(": ", 1)[-1]
                    try:
                        clean = type(e)(last)
                    except Exception:
                        clean = RuntimeError(last)
                    raise clean from None
                raise
            if skipped:
                self.stats.skipped.extend(skipped)
            yield x, y
