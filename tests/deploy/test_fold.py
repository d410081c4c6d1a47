"""fold_batchnorm and prepare_for_inference over the registry: no BatchNorm left beside a conv / linear layer (every
variant, meta device), equal outputs (each family's smallest variant, and RepLKNet for its head BatchNorm),
idempotence, and the head fold through global average pooling."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import convscope
from convscope.deploy import (
    FOLD_BATCHNORM,
    PREPARE,
    TRANSFORMS,
    batchnorm_folds,
    fold_batchnorm_,
    prepare_for_inference,
    prepare_for_inference_,
    remaining_batchnorms,
)
from convscope.layers.classifier import ClassifierHead
from convscope.models import list_models

from ..conftest import input_size_for, random_model, rel_err
from .test_reparam import _well_conditioned
from .zoo import UNFOLDABLE, smallest_per_family, unfoldable


def test_registered():
    assert TRANSFORMS["fold_batchnorm"] is FOLD_BATCHNORM and TRANSFORMS["prepare"] is PREPARE


@pytest.mark.parametrize("name", list_models())
def test_no_batchnorm_left_after_prepare(name):
    with torch.device("meta"):
        model = convscope.create_model(name)
    prepare_for_inference_(model)
    assert not FOLD_BATCHNORM.applies_to(model)
    left, declared = remaining_batchnorms(model), unfoldable(name)
    unexplained = [n for n in left if not any(re.fullmatch(p, n) for p, _ in declared)]
    assert not unexplained, f"{name}: BatchNorms left that zoo.UNFOLDABLE does not explain: {unexplained}"
    stale = [p for p, _ in declared if not any(re.fullmatch(p, n) for n in left)]
    assert not stale, f"{name}: declared unfoldable but none left (fold now?): remove {stale} from zoo.UNFOLDABLE"


def test_deploy_doc_lists_the_unfoldable_batchnorms():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    section = doc.split("### BatchNorms that stay", 1)[-1].split("\n## ", 1)[0]
    missing = [fam for fam, declared in UNFOLDABLE.items() if declared and f"`{fam}`" not in section]
    assert "### BatchNorms that stay" in doc and not missing, f"docs/deploy.md does not list {missing}"


def _changes(name: str) -> bool:
    with torch.device("meta"):
        return PREPARE.applies_to(convscope.create_model(name))


@pytest.mark.parametrize("name", [n for n in list_models() if not _changes(n)])
def test_prepare_leaves_models_without_anything_to_fold_as_they_are(name):
    """Families with no BatchNorm and no branches (most of the zoo): the same modules and keys after prepare.
    (The others are checked by test_prepare_for_inference_equal_outputs and test_no_batchnorm_left_after_prepare.)"""
    with torch.device("meta"):
        model = convscope.create_model(name)
    before = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    prepare_for_inference_(model)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == before


@pytest.mark.parametrize("name", [n for n in smallest_per_family() if _changes(n)])
def test_prepare_for_inference_equal_outputs(name):
    # RepLKNet's smallest variant has 79M parameters; one block per stage at narrow widths keeps every kind of
    # fold (its head BatchNorm through global pooling included) at a fraction of the cost
    kwargs = dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128)) if name.startswith("replknet") else {}
    model = _well_conditioned(random_model(name, seed=3, **kwargs))
    t = model.traits
    h, w = (32, 64) if t.fixed_input_size is None and max(t.min_input_size) <= 32 else input_size_for(model)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        if sum(p.numel() for p in model.parameters()) < 60e6:
            got_model = prepare_for_inference(model)
            assert got_model is not model
        else:
            got_model = prepare_for_inference_(model)
        got = got_model(x)
        assert rel_err(got, want) < 1e-5
        state = {k: v.clone() for k, v in got_model.state_dict().items()}
        prepare_for_inference_(got_model)  # idempotent
        assert all(torch.equal(state[k], v) for k, v in got_model.state_dict().items())


def test_replknet_head_batchnorm_folds_through_pooling():
    with torch.device("meta"):
        model = convscope.create_model("replknet_31b", deploy=True)
    assert batchnorm_folds(model) == ["head.norm"]
    fold_batchnorm_(model)
    assert isinstance(model.head.norm, nn.Identity) and remaining_batchnorms(model) == []


@pytest.mark.parametrize("norm_first,bn", [(True, nn.BatchNorm2d), (False, nn.BatchNorm1d)])
def test_head_fold_before_and_after_pooling(norm_first, bn):
    head = ClassifierHead(8, 5, norm_layer=bn, norm_first=norm_first).eval()
    with torch.no_grad():
        head.norm.running_mean.normal_()
        head.norm.running_var.uniform_(0.5, 2)
        head.norm.weight.normal_()
        head.norm.bias.normal_()
    x = torch.randn(3, 8, 5, 7)
    want = head(x)
    folded = fold_batchnorm_(copy.deepcopy(head))
    assert isinstance(folded.norm, nn.Identity)
    torch.testing.assert_close(folded(x), want, rtol=1e-5, atol=1e-6)


def test_sequential_bn_before_unpadded_and_after_any_conv():
    seq = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1), nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6),
                        nn.BatchNorm2d(6), nn.Conv2d(6, 2, 3, padding=1)).eval()
    for m in seq:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        want = seq(x)
        folded = fold_batchnorm_(copy.deepcopy(seq))
        # the first two fold; the last BatchNorm feeds a padded conv and stays
        assert remaining_batchnorms(folded) == ["4"]
        torch.testing.assert_close(folded(x), want, rtol=1e-5, atol=1e-5)
