"""Structured pruning of MLP hidden channels over the registry: masked and slimmed forms give equal outputs, the
slimmed model is smaller, and save_pruned / load_pruned rebuild it exactly through create_model and the spec."""
from __future__ import annotations

import copy

import pytest
import torch

import convscope
from convscope.deploy.prune import (hidden_groups, load_pruned, mask_, plan_pruning, pruning_spec, save_pruned,
                                    slim_)

from convscope.deploy.export import cheap_random_model

from ..conftest import input_size_for, meta_model, rel_err
from .zoo import smallest_per_family

PRUNABLE = [n for n in smallest_per_family() if hidden_groups(meta_model(n))]
# the families the issue names must be among them
assert {"convnext", "inception_next", "caformer", "unireplknet"} <= {n.rsplit("_", 1)[0] for n in PRUNABLE}, \
    PRUNABLE


def _n(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", PRUNABLE)
def test_masked_equals_slimmed_and_rebuilds(name, tmp_path):
    model = cheap_random_model(name, seed=4)
    h, w = (32, 32) if model.fixed_input_size is None and max(model.min_input_size) <= 32 else input_size_for(model)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    plan = plan_pruning(model, 0.3, quantum=1)
    masked = mask_(copy.deepcopy(model), plan)
    slim = slim_(copy.deepcopy(masked), plan)
    with torch.no_grad():
        a, b, orig = masked(x), slim(x), model(x)
    assert rel_err(b, a) < 1e-5
    assert rel_err(a, orig) > 1e-4  # the mask changed something: channels really were removed
    widths = plan.widths()
    total = sum(len(k) for k in plan.keep)
    full = sum(g.modules(model)[1].weight.shape[0] for g in plan.groups)
    assert abs(1 - total / full - 0.3) < 0.02, (total, full)
    assert _n(slim) < _n(model)
    path = save_pruned(slim, pruning_spec(slim, name), tmp_path / "pruned.safetensors")
    rebuilt = load_pruned(path)
    assert {g.path: g.modules(rebuilt)[1].weight.shape[0] for g in hidden_groups(rebuilt)} == widths
    with torch.no_grad():
        assert torch.equal(rebuilt(x), b)


def test_taylor_importance_and_quantum():
    torch.manual_seed(0)
    model = convscope.create_model("convnext_atto", num_classes=4)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(2)]
    plan = plan_pruning(model, 0.3, importance="taylor", loader=data, quantum=8)
    assert all(len(k) % 8 == 0 or len(k) == g.modules(model)[1].weight.shape[0]
               for g, k in zip(plan.groups, plan.keep))
    assert len({len(k) for k in plan.keep}) > 1  # a global budget: the widths differ per layer
    with pytest.raises(ValueError, match="needs a loader"):
        plan_pruning(model, 0.3, importance="taylor")
    with pytest.raises(ValueError, match="ratio must be"):
        plan_pruning(model, 1.5)


def test_load_pruned_rejects_plain_weights(tmp_path):
    from convscope.models import save_weights
    path = save_weights(convscope.create_model("convnext_atto", num_classes=3), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="no pruning spec"):
        load_pruned(path)
