"""Shared test helpers: the timm shim, weight randomisation, and the model lists the suites walk."""
from __future__ import annotations

import copy
import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import convscope
from convscope.models import list_models, model_card

# Under pytest-xdist every worker gets one thread: two workers with two threads each on two cores run 2-3x
# slower than one worker alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Models above this many parameters are built on the meta device only (counted, never run) in the contract
# suite; the smallest variant of every family is always run whatever its size.
CONTRACT_CAP_M = float(os.environ.get("CONVSCOPE_CONTRACT_CAP_M", 30))

_TORCHVISION_LIB = None


def import_timm():
    """Import timm on a CPU-only torch whose matching torchvision is a CUDA build.

    That torchvision fails at import with "operator torchvision::nms does not exist"; declaring the two
    operators it registers fake kernels for lets it (and timm) import. Nothing here calls them.
    """
    global _TORCHVISION_LIB
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::" not in str(e) or _TORCHVISION_LIB is not None:
            raise
        _TORCHVISION_LIB = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _TORCHVISION_LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import timm
    return timm


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer values far from their init, so that parity tests can fail.

    Matrices and kernels get N(0, 1/fan_in); per-channel vectors named like biases or means get N(0, 0.1),
    other vectors (norm weights, layer scales, StarReLU scale) +-U(0.5, 1.5) with a random sign per element, as
    trained ones often are negative (a strictly positive draw would hide a layer scale taken as |gamma|); BN
    variances U(0.5, 2). Frozen (non-trainable) matrices keep their values.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if isinstance(t, torch.nn.Parameter) and not t.requires_grad:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if t.ndim >= 2:
                fan_in = math.prod(t.shape[1:])
                v = torch.randn(t.shape, generator=g) / math.sqrt(fan_in)
            elif leaf == "running_var":
                v = torch.rand(t.shape, generator=g) * 1.5 + 0.5
            elif leaf in ("bias", "running_mean", "beta") or leaf.endswith("bias"):
                v = torch.randn(t.shape, generator=g) * 0.1
            else:
                sign = torch.where(torch.rand(t.shape, generator=g) < 0.5, -1.0, 1.0)
                v = (torch.rand(t.shape, generator=g) + 0.5) * sign
            t.copy_(v.to(t.dtype))
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def count_params(model: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)


@functools.cache
def meta_model(name: str) -> torch.nn.Module:
    """The default build of `name` on the meta device (no memory, no init), cached: do not modify it."""
    with torch.device("meta"):
        return convscope.create_model(name)


@functools.cache
def meta_param_count(name: str) -> tuple[int, int]:
    """(trainable, frozen) parameter counts of a variant built on the meta device (no memory, no init)."""
    m = meta_model(name)
    return count_params(m, True), count_params(m, False)


def contract_models() -> list[str]:
    """Variants run for real in the contract suite: all below the cap, plus each family's smallest."""
    names = set()
    smallest: dict[str, tuple[int, str]] = {}
    for n in list_models():
        p = sum(meta_param_count(n))
        fam = model_card(n).family
        if fam not in smallest or p < smallest[fam][0]:
            smallest[fam] = (p, n)
        if p <= CONTRACT_CAP_M * 1e6:
            names.add(n)
    names.update(n for _, n in smallest.values())
    return sorted(names)


def reparameterizable_models() -> list[str]:
    """Registered variants with anything for `reparameterize_model` to merge or fold."""
    from convscope.deploy import is_reparameterizable
    return [n for n in list_models() if is_reparameterizable(meta_model(n))]


def random_model(name: str, seed: int = 1, **kwargs) -> torch.nn.Module:
    """Our `name` built on the meta device and materialised with `randomize_` values, in eval mode (no init)."""
    with torch.device("meta"):
        m = convscope.create_model(name, **kwargs)
    return randomize_(m.to_empty(device="cpu"), seed).eval()


def input_size_for(model: torch.nn.Module, nonsquare: bool = False) -> tuple[int, int]:
    """A small input the model takes: 64x64 (64x96 when non-square), or its fixed size. Sides are multiples of 32,
    or of the model's `input_multiple` where that is larger (HaloNet's blocks), at least the model's minimum, and
    stay non-square when asked (a minimum above 64, LSNet's 65, would make both sides equal)."""
    if model.traits.fixed_input_size is not None:
        return tuple(model.traits.fixed_input_size)
    mh, mw = model.traits.min_input_size
    h, w = (64, 96) if nonsquare else (64, 64)
    step = max(32, model.traits.input_multiple)
    h = max(h, -(-mh // step) * step)
    w = max(w, -(-mw // step) * step)
    if nonsquare and h == w:
        w += step
    return h, w


@functools.lru_cache(maxsize=8)
def _built(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return convscope.create_model(name).eval()


def built(name: str) -> torch.nn.Module:
    """A fresh copy of the (cached) default build of `name`, in eval mode."""
    return copy.deepcopy(_built(name))


@pytest.fixture
def timm():
    return import_timm()


def timm_random_model(timm_module, name: str, seed: int = 1) -> torch.nn.Module:
    """timm's `name` with randomised weights, in eval mode.

    Built on the meta device and materialised with random values, which skips timm's (slow) init; models with
    integer buffers (index tables that `to_empty` would leave as garbage) are built normally instead, and float
    buffers timm recomputes (`init_non_persistent_buffers`) are recomputed after the randomisation.
    """
    m = timm_module.create_model(name, pretrained=False, device="meta")
    int_buffers = [n for n, b in m.named_buffers() if not b.is_floating_point() and "num_batches" not in n]
    m = m.to_empty(device="cpu") if not int_buffers else timm_module.create_model(name, pretrained=False)
    randomize_(m, seed)
    # Non-persistent float buffers are derived tables, not weights (MaxViT's one-hot relative position lookups):
    # give them back the values timm computes for them.
    for mod in m.modules():
        if hasattr(mod, "init_non_persistent_buffers"):
            mod.init_non_persistent_buffers()
    return m.eval()


SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m convscope ARGS` in a fresh process (the package from this checkout)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "convscope", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)
