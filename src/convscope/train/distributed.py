"""Data-parallel training under torchrun: process-group setup and the few collectives the engine needs.

`torchrun --nproc_per_node=N -m convscope train ...` starts N processes with RANK / WORLD_SIZE / LOCAL_RANK set;
`init_distributed` joins them into one group (gloo on CPU, nccl on GPU) with a finite timeout, so that a
collective waiting on a rank that died fails instead of hanging. torchrun itself watches its workers (every 0.1 s
by default) and, when one exits abnormally, stops the others and exits non-zero, or with --max-restarts starts
them all again (`--resume auto` then continues from the last checkpoint; docs/training.md, "Several machines").
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..utils import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer; got {value!r}") from None


def init_distributed(device: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Join the torchrun job described by the environment (a single process when WORLD_SIZE is unset or 1)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world_size == 1:
        return DistInfo(0, 1, 0, dev)
    if timeout_s <= 0:
        raise ValueError(f"distributed timeout must be > 0 seconds; got {timeout_s}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if rank == 0:
        _warn_shared_store()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, dev)


def _warn_shared_store() -> None:
    """Warn when torchrun may restart the workers while they share its rendezvous store: restarted workers can
    then read the previous attempt's addresses and fail to connect (pytorch issue 135712)."""
    if _env_int("TORCHELASTIC_MAX_RESTARTS", 0) > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        warnings.warn("torchrun --max-restarts with its shared rendezvous store: a restart may fail to connect; "
                      "set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment", stacklevel=3)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `t` over the ranks (in place; `t` itself when not distributed)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_tensors(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor, in rank order."""
    if not info.enabled:
        return [t]
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t.contiguous())
    return out


def broadcast_tensor(t: torch.Tensor, info: DistInfo, src: int = 0) -> torch.Tensor:
    if info.enabled:
        dist.broadcast(t, src)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
