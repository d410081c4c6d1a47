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
from torch import nn

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


class _AllReduceSum(torch.autograd.Function):
    """The sum over the ranks, differentiable: the gradient of each rank's input is the sum of every rank's
    gradient of the output (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank's batch, on any device and backend (gloo on CPU too;
    torch's nn.SyncBatchNorm runs on GPUs only). The mean comes from one differentiable all-reduce of the count
    and the sums, the variance from a second of the squared deviations from that mean, so the forward, the
    gradients and the running statistics (identical on every rank) are those of one process holding the whole
    batch; ranks may hold different numbers of positions (SparK's visible ones). In eval mode, or without a
    process group of more than one rank, it is nn.BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        total = _AllReduceSum.apply(torch.cat([xf.new_full((1,), x.numel() // x.shape[1]), xf.sum(dims)]))
        n, mean = total[0], total[1:] / total[0]
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        return y.to(x.dtype)


_SYNC_CLASSES: dict[type, type] = {nn.BatchNorm2d: SyncBatchNorm2d}


def convert_sync_batchnorm(module: nn.Module) -> int:
    """Make every BatchNorm2d in `module` synchronise its statistics across the ranks (`--sync-bn`), in place: each
    keeps its parameters, buffers and keys, and its class becomes one whose BatchNorm2d.forward is
    SyncBatchNorm2d's (a subclass such as BatchNorm + activation still applies its activation). Returns how many
    were converted."""
    n = 0
    for m in module.modules():
        cls = type(m)
        if not isinstance(m, nn.BatchNorm2d) or isinstance(m, SyncBatchNorm2d):
            continue
        if cls not in _SYNC_CLASSES:
            _SYNC_CLASSES[cls] = type(f"Sync{cls.__name__}", (cls, SyncBatchNorm2d), {"__module__": cls.__module__})
        m.__class__ = _SYNC_CLASSES[cls]
        n += 1
    return n
