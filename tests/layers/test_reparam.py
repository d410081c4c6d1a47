"""Structural re-parameterisation at module level: the kernel arithmetic, the nn.Sequential rule, and every
re-parameterisable module type in the registry, exact in float64."""
from __future__ import annotations

import copy
import functools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.layers import MIXERS, DilatedReparamBlock, ReparamLargeKernelConv
from convscope.layers.mixers.dilated_reparam import DILATED_BRANCHES
from convscope.layers.reparam import (
    dilate_kernel,
    effective_kernel_size,
    fuse_affine_before_,
    fuse_bn_before_conv_,
    fuse_bn_into_conv_,
    is_reparameterizable,
    match_reparam_form_,
    merge_parallel_convs,
    pad_kernel,
    reparameterize_,
    sequential_bn_folds,
)
from convscope.models import list_models, model_card

from ..conftest import meta_model, meta_param_count, randomize_, rel_err, reparameterizable_models
from ..deploy.zoo import unfoldable

F64_TOL = 1e-9


def _x(chans: int, h: int = 36, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, chans, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _random(module: nn.Module, seed: int = 0) -> nn.Module:
    return randomize_(module.double(), seed).eval()


def _assert_idempotent(deployed: nn.Module) -> None:
    before = {k: v.clone() for k, v in deployed.state_dict().items()}
    structure = repr(deployed)
    reparameterize_(deployed)
    for m in deployed.modules():
        if callable(getattr(m, "reparameterize", None)):
            m.reparameterize()
    after = deployed.state_dict()
    assert repr(deployed) == structure
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"second reparameterize changed {k}"


# -- kernel arithmetic ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,r", [(3, 2), (5, 3), (3, 5), (7, 2)])
def test_dilated_kernel_equals_dense_kernel_with_zeros(k, r):
    w = torch.randn(4, 1, k, k, dtype=torch.float64)
    x = _x(4)
    dense = dilate_kernel(w, r)
    assert dense.shape[-1] == r * (k - 1) + 1
    assert (dense != 0).sum() == (w != 0).sum()
    torch.testing.assert_close(F.conv2d(x, dense, padding=r * (k - 1) // 2, groups=4),
                               F.conv2d(x, w, padding=r * (k - 1) // 2, dilation=r, groups=4), rtol=0, atol=1e-12)


def test_small_kernel_zero_padded_to_large_gives_the_same_conv():
    w = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    x = _x(4)
    torch.testing.assert_close(F.conv2d(x, pad_kernel(w, 31), padding=15, groups=4),
                               F.conv2d(x, w, padding=2, groups=4), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="cannot centre"):
        pad_kernel(w, 8)


def test_merge_parallel_convs_rejects_uncentred_branches():
    a = nn.Conv2d(4, 4, 7, padding=3, groups=4)
    b = nn.Conv2d(4, 4, 3, padding=0, groups=4)
    with pytest.raises(ValueError, match="not centred"):
        merge_parallel_convs([a, b])
    with pytest.raises(ValueError, match="share channels"):
        merge_parallel_convs([a, nn.Conv2d(4, 4, 3, padding=1, groups=2)])


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_bn_folds_into_conv_on_either_side(groups):
    conv = nn.Conv2d(6, 12, 3, padding=0, groups=groups)
    bn_in, bn_out = nn.BatchNorm2d(6), nn.BatchNorm2d(12)
    seq = _random(nn.Sequential(bn_in, conv, bn_out))
    x = _x(6)
    want = seq(x)
    fuse_bn_before_conv_(seq[0], seq[1])
    fuse_bn_into_conv_(seq[1], seq[2])
    assert rel_err(seq[1](x), want) < F64_TOL


def test_bn_folds_into_linear():
    lin = _random(nn.Linear(8, 5, bias=False))
    bn_in, bn_out = _random(nn.BatchNorm1d(8), 1), _random(nn.BatchNorm1d(5), 2)
    x = torch.randn(7, 8, dtype=torch.float64)
    want = bn_out(lin(bn_in(x)))
    fuse_bn_before_conv_(bn_in, lin)
    fuse_bn_into_conv_(lin, bn_out)
    assert rel_err(lin(x), want) < F64_TOL


def test_bn_is_never_folded_into_a_padded_conv_that_follows_it():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match="zero padding would not see the shift"):
        fuse_affine_before_(conv, torch.ones(4), torch.ones(4))
    seq = _random(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)))
    assert sequential_bn_folds(seq) == [] and not is_reparameterizable(seq)
    x = _x(4)
    want = seq(x)
    reparameterize_(seq)
    assert isinstance(seq[0], nn.BatchNorm2d)
    torch.testing.assert_close(seq(x), want, rtol=0, atol=0)


def test_sequential_rule_folds_neighbours_only_in_plain_sequentials():
    seq = _random(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4),
                                nn.Conv2d(4, 5, 2, stride=2), nn.Identity(), nn.BatchNorm2d(5), nn.BatchNorm2d(5)))
    assert sequential_bn_folds(seq) == [("1", "0", "after"), ("3", "4", "before"), ("6", "4", "after")]
    x = _x(3)
    want = seq(x)
    reparameterize_(seq)
    assert [type(m).__name__ for m in seq] == ["Conv2d", "Identity", "ReLU", "Identity", "Conv2d", "Identity",
                                              "Identity", "BatchNorm2d"]
    assert rel_err(seq(x), want) < F64_TOL

    class Reordered(nn.Sequential):  # a custom forward: the children's order says nothing about the data flow
        def forward(self, x):
            return self[0](self[1](x))

    assert sequential_bn_folds(Reordered(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))) == []
    no_stats = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    assert sequential_bn_folds(no_stats) == []


# -- the two operators, over the whole official table --------------------------------------------------------------
@pytest.mark.parametrize("kernel_size", sorted(DILATED_BRANCHES))
def test_dilated_reparam_block_every_official_kernel_size(kernel_size):
    block = _random(DilatedReparamBlock(6, kernel_size))
    ks, rs = DILATED_BRANCHES[kernel_size]
    assert [(b.conv.kernel_size[0], b.conv.dilation[0]) for b in block.branches] == list(zip(ks, rs, strict=False))
    assert all(b.conv.bias is None for b in block.branches) and block.lk_conv.conv.bias is None
    x = _x(6)
    want = block(x)
    reparameterize_(block)
    assert len(block.branches) == 0 and block.lk_conv.conv.kernel_size == (kernel_size, kernel_size)
    assert rel_err(block(x), want) < F64_TOL
    _assert_idempotent(block)


def test_dilated_reparam_block_table_matches_official_file():
    # official unireplknet.py @b5677d8, DilatedReparamBlock.__init__, and official-numbers.md section 5
    assert DILATED_BRANCHES[13] == ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5))
    assert DILATED_BRANCHES[17] == ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7))
    assert DILATED_BRANCHES[5] == ((3, 3), (1, 2))
    with pytest.raises(ValueError, match="kernel_size in"):
        DilatedReparamBlock(8, 19)


@pytest.mark.parametrize("kernel_size,small,stride", [(31, 5, 1), (13, 3, 1), (27, None, 1), (31, 5, 2)])
def test_replk_conv(kernel_size, small, stride):
    lk = _random(ReparamLargeKernelConv(5, kernel_size, small, stride=stride))
    x = _x(5)
    want = lk(x)
    reparameterize_(lk)
    assert [type(m) for m in lk.modules()].count(nn.Conv2d) == 1
    assert rel_err(lk(x), want) < F64_TOL
    _assert_idempotent(lk)


def test_mixers_are_registered():
    assert MIXERS["replk"] is ReparamLargeKernelConv and MIXERS["dilated_reparam"] is DilatedReparamBlock


# -- every re-parameterisable module type in the registry ----------------------------------------------------------
def _case_label(module: nn.Module) -> str | None:
    if callable(getattr(module, "reparameterize", None)):
        return type(module).__name__
    if sequential_bn_folds(module):
        return "Sequential[" + ",".join(type(m).__name__ for m in module) + "]"
    return None


def _record(cases: dict, label: str, name: str, path: str, module: nn.Module, args: tuple) -> None:
    # channels, and the (H, W) and extra arguments of the recorded call: used where a module takes more than one
    # argument (CvT's attention takes the map size) or refuses the small test image (halo blocks)
    cases.setdefault(label, (name, path, args[0].shape[1], tuple(args[0].shape[1:]), args[1:]))


@functools.cache
def module_cases() -> dict[str, tuple]:
    """One instance of every re-parameterisable module type (and nn.Sequential fold pattern) in the registry:
    label -> (model, module path, input channels), found by a meta-device forward of each family's smallest
    re-parameterisable variant."""
    smallest: dict[str, str] = {}
    for n in reparameterizable_models():
        fam = model_card(n).family
        if fam not in smallest or sum(meta_param_count(n)) < sum(meta_param_count(smallest[fam])):
            smallest[fam] = n
    cases: dict[str, tuple[str, str, int]] = {}
    for name in sorted(smallest.values()):
        model = meta_model(name)
        handles = []
        for path, m in model.named_modules():
            label = _case_label(m)
            if label and label not in cases:
                handles.append(m.register_forward_pre_hook(functools.partial(_record, cases, label, name, path)))
        try:
            h, w = (max(64, s) for s in model.traits.min_input_size)  # LSNet: 65x65
            model(torch.empty(2, 3, h, w, device="meta"))  # batch 2: LSNet's head has a BatchNorm1d
        finally:
            for h in handles:
                h.remove()
    return cases


MODULE_CASES = module_cases()


def test_cases_cover_the_known_types():
    # not the list the tests run on (that comes from the registry), but a check that discovery finds them
    assert {"ConvBnAct", "ReparamLargeKernelConv", "DilatedReparamBlock", "RepLKBlock", "ConvFFN",
            "UniRepLKNetBlock", "MetaNeXtBlock", "Sequential[Conv2d,BatchNorm2d]",
            "Sequential[BatchNorm2d,Conv2d]"} <= set(MODULE_CASES)


@pytest.mark.parametrize("label", sorted(MODULE_CASES))
def test_module_reparameterize_is_exact_in_float64(label):
    name, path, chans, shape, extra = MODULE_CASES[label]
    module = _random(copy.deepcopy(meta_model(name).get_submodule(path)).to_empty(device="cpu"), seed=5)
    # one image just larger than the widest kernel, so that some outputs see every tap
    extent = max([effective_kernel_size(c)[0] for c in module.modules() if isinstance(c, nn.Conv2d)] + [15])
    x = _x(chans, extent + 1, extent + 3)[:1]
    try:
        if extra:
            raise ValueError("the module takes more than the map")
        want = module(x)
    except ValueError:  # the recorded call's shape and arguments
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        want = module(x, *extra)
    deployed = copy.deepcopy(module)
    if callable(getattr(deployed, "reparameterize", None)):
        deployed.reparameterize()  # the module's own method, which re-parameterises its children first
    else:
        reparameterize_(deployed)
    err = rel_err(deployed(x, *extra), want)
    assert err < F64_TOL, (name, path, err)
    declared = [p for p, _ in unfoldable(name)]  # the BatchNorms tests/deploy/zoo.py declares unfoldable may stay
    left = [f"{path}.{n}" for n, m in deployed.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert not [n for n in left if not any(re.fullmatch(d, n) for d in declared)], deployed
    _assert_idempotent(deployed)


def test_match_reparam_form_brings_a_module_to_a_checkpoint_form():
    lk = _random(ReparamLargeKernelConv(4, 7, 3))
    deployed = reparameterize_(copy.deepcopy(lk))
    fresh = ReparamLargeKernelConv(4, 7, 3).double().eval()
    match_reparam_form_(fresh, deployed.state_dict())
    fresh.load_state_dict(deployed.state_dict())  # strict
    x = _x(4)
    torch.testing.assert_close(fresh(x), deployed(x), rtol=0, atol=0)
    same = ReparamLargeKernelConv(4, 7, 3)
    match_reparam_form_(same, lk.state_dict())  # a train-form checkpoint leaves the train form alone
    assert len(same.branches) == 1 and isinstance(same.lk_conv.bn, nn.BatchNorm2d)


def test_every_registry_model_with_batchnorm_beside_a_conv_is_reparameterizable():
    # InceptionNeXt has no multi-branch kernel, only BatchNorms to fold; ConvNeXt has none
    names = reparameterizable_models()
    assert set(list_models("inception_next*")) | set(list_models("*replknet*")) <= set(names)
    assert not set(list_models("convnext*")) & set(names)
