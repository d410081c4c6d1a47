"""`--sync-bn`: SyncBatchNorm2d on two gloo ranks, each with part of a batch, against nn.BatchNorm2d on the whole
batch in one process: the output, the input and weight gradients, and the running statistics."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from convscope.models.maxvit import BatchNormAct2d
from convscope.train.distributed import SyncBatchNorm2d, convert_sync_batchnorm

C = 5
SPLIT = (3, 5)   # uneven: the ranks hold different numbers of samples (SparK's visible positions differ too)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SPLIT), C, 4, 6, generator=g, dtype=torch.float64) * 3 + 1.5
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64)


def _layers() -> nn.Sequential:
    """A plain BatchNorm2d and a subclass that adds an activation (MaxViT's), with non-trivial affine weights."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.BatchNorm2d(C, momentum=0.3), BatchNormAct2d(C)).double()
    for bn in m:
        nn.init.normal_(bn.weight, 1.0, 0.5)
        nn.init.normal_(bn.bias, 0.0, 0.5)
    return m


def _reference() -> dict[str, torch.Tensor]:
    x, g = _data()
    x.requires_grad_(True)
    m = _layers().train()
    y = m(x)
    (y * g).sum().backward()
    out = {"y": y.detach(), "dx": x.grad}
    out.update({f"grad.{k}": p.grad for k, p in m.named_parameters()})
    out.update({f"buf.{k}": b for k, b in m.named_buffers()})
    return out


def _worker(rank: int, store: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        x, g = _data()
        lo = sum(SPLIT[:rank])
        xs, gs = x[lo:lo + SPLIT[rank]].clone().requires_grad_(True), g[lo:lo + SPLIT[rank]]
        m = _layers().train()
        assert convert_sync_batchnorm(m) == 2
        y = m(xs)
        (y * gs).sum().backward()
        out = {"y": y.detach(), "dx": xs.grad}
        for k, p in m.named_parameters():   # DDP would average; the sum is the whole batch's gradient
            dist.all_reduce(p.grad)
            out[f"grad.{k}"] = p.grad
        out.update({f"buf.{k}": b for k, b in m.named_buffers()})
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_sync_bn_on_two_ranks_equals_batchnorm_on_the_whole_batch(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(str(tmp_path / "store"), results), nprocs=2, join=True)
        ranks = [dict(results[0]), dict(results[1])]
    ref = _reference()
    assert torch.allclose(torch.cat([ranks[0]["y"], ranks[1]["y"]]), ref["y"], atol=1e-10)
    assert torch.allclose(torch.cat([ranks[0]["dx"], ranks[1]["dx"]]), ref["dx"], atol=1e-10)
    for key in [k for k in ref if k.startswith(("grad.", "buf."))]:
        for r in ranks:
            assert torch.allclose(r[key], ref[key], atol=1e-10), key


def test_sync_bn_is_batchnorm_outside_a_process_group():
    """Without a process group (one process, or eval mode) the converted layers compute what they did; their
    parameters, buffers and keys are the same objects."""
    x, _ = _data()
    ref, m = _layers(), _layers()
    params = {k: id(p) for k, p in m.named_parameters()}
    convert_sync_batchnorm(m)
    assert isinstance(m[0], SyncBatchNorm2d) and isinstance(m[1], BatchNormAct2d) and isinstance(m[1], SyncBatchNorm2d)
    assert {k: id(p) for k, p in m.named_parameters()} == params and m.state_dict().keys() == ref.state_dict().keys()
    assert torch.equal(m.train()(x), ref.train()(x))
    assert torch.equal(m.eval()(x), ref.eval()(x))
    assert convert_sync_batchnorm(m) == 0   # already converted
