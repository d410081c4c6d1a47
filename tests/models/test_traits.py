"""ModelTraits: the registry's declared facts equal what a built model reports, and come without building it;
typed cards; create_model's argument checks."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import convscope
from convscope.deploy import is_reparameterizable
from convscope.models import Card, ConvScopeModel, ModelTraits, list_models, model_traits
from convscope.models.registry import _CARD_FIELDS, _CFG_FIELDS
from convscope.models.traits import traits_of_arguments

from ..conftest import meta_model, random_model


def _accepts(model: torch.nn.Module, h: int, w: int) -> bool:
    try:
        model.check_input(torch.empty(1, model.in_chans, h, w, device="meta"))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", list_models())
def test_declared_traits_are_what_the_built_model_reports(name):
    traits = model_traits(name)
    model = meta_model(name)
    assert model.traits == traits
    info = model.feature_info
    assert traits.channels == tuple(f["num_chs"] for f in info)
    assert traits.reductions == tuple(f["reduction"] for f in info)
    assert traits.taps == tuple(f["module"] for f in info)
    assert traits.num_features == model.num_features
    assert traits.reparameterizable == is_reparameterizable(model)
    names = [n for n, _ in model.named_parameters()]
    assert all(any(n.startswith(p) for n in names) for p in traits.grad_free), traits.grad_free
    # the input sizes: the fixed size alone, or from the minimum (in whole multiples) up, and not below it
    if traits.fixed_input_size is not None:
        fh, fw = traits.fixed_input_size
        assert _accepts(model, fh, fw) and not _accepts(model, fh + traits.input_multiple, fw)
    else:
        m = traits.input_multiple
        mh, mw = (-(-s // m) * m for s in traits.min_input_size)
        assert _accepts(model, mh, mw) and _accepts(model, mh + m, mw + 2 * m)
        assert not _accepts(model, traits.min_input_size[0] - 1, mw)


def test_model_traits_builds_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("model_traits built a model")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    for name in ("convnext_atto", "maxvit_tiny_tf_224", "crossvit_9_240", "lsnet_t", "randformer_s12"):
        assert isinstance(model_traits(name), ModelTraits)


def test_model_traits_follow_constructor_arguments():
    assert model_traits("transnext_micro", img_size=256).fixed_input_size == (256, 256)
    assert model_traits("convnext_atto", dims=(8, 16, 32, 64)).channels == (8, 16, 32, 64)
    assert model_traits("mixer_bench_tvconv", input_size=32).fixed_input_size == (32, 32)
    assert model_traits("mixer_bench_pooling").fixed_input_size is None
    lsnet = model_traits("lsnet_t")
    assert lsnet.reductions == (8, 16, 32, 64) and lsnet.min_input_size == (65, 65)
    assert lsnet.grad_free == ("stages.3.blocks.9.ffn.pw2.bn.bias",) and "BatchNorm1d" in lsnet.grad_free_reason
    cvt = model_traits("cvt_13_224")
    assert (cvt.features_fmt, cvt.num_prefix_tokens, cvt.reductions) == ("NLC", 1, (4, 8, 16))
    with pytest.raises(TypeError, match=r"unknown constructor option\(s\) \['dimz'\]"):
        model_traits("convnext_atto", dimz=(8, 16, 32, 64))


def test_pruned_stage_widths_reach_the_traits():
    from convscope.deploy.prune import plan_pruning, slim_

    model = random_model("convnext_atto")
    plan = plan_pruning(model, 0.3, scopes=("stage",), stage_ratio=0.25, quantum=8)
    slim_(model, plan)
    widths = tuple(f["num_chs"] for f in model.feature_info)
    assert widths != (40, 80, 160, 320)
    assert model.traits.channels == widths and model.traits.num_features == model.num_features == widths[-1]
    assert model_traits("convnext_atto").channels == (40, 80, 160, 320)  # the declaration stays the variant's


def test_a_model_without_traits_says_so():
    class Bare(ConvScopeModel):
        def __init__(self, dims=(8,), *, in_chans=3, num_classes=10):
            super().__init__(in_chans, num_classes)

    with pytest.raises(NotImplementedError, match="Bare declares no traits_for"):
        traits_of_arguments(Bare, {})


def test_traits_reject_inconsistent_facts():
    with pytest.raises(ValueError, match="one entry per feature stage"):
        ModelTraits(channels=(8, 16), reductions=(4,), taps=("stages.0",), num_features=16)
    with pytest.raises(ValueError, match="features_fmt must be one of"):
        ModelTraits(channels=(8,), reductions=(4,), taps=("s",), num_features=8, features_fmt="NHWC")
    with pytest.raises(ValueError, match="go together"):
        ModelTraits(channels=(8,), reductions=(4,), taps=("s",), num_features=8, grad_free=("head.",))


def test_card_holds_exactly_the_model_card_and_config_fields():
    assert {f.name for f in dataclasses.fields(Card)} == _CARD_FIELDS | _CFG_FIELDS
    assert Card(params_m=1.0, top1=None).declared() == dict(params_m=1.0, top1=None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'crop'"):
        Card(crop=0.9)


# -- create_model's argument checks, before anything is built -------------------------------------------------------
BAD_ARGUMENTS = [
    (dict(num_classes=True), TypeError, r"num_classes must be an int in \[0, 100000\].*got True \(bool\)"),
    (dict(num_classes=2.5), TypeError, r"num_classes must be an int in \[0, 100000\].*got 2\.5 \(float\)"),
    (dict(num_classes=10 ** 9), ValueError, r"num_classes must be an int in \[0, 100000\].*got 1000000000"),
    (dict(num_classes=-1), ValueError, r"num_classes must be an int in \[0, 100000\].*got -1"),
    (dict(in_chans=0), ValueError, r"in_chans must be an int in \[1, 1024\]; got 0"),
    (dict(in_chans=4096), ValueError, r"in_chans must be an int in \[1, 1024\]; got 4096"),
    (dict(in_chans="3"), TypeError, r"in_chans must be an int in \[1, 1024\]; got '3' \(str\)"),
    (dict(drop_path_rate=2.0), ValueError, r"drop_path_rate must be a finite float in \[0, 1\) or None; got 2\.0"),
    (dict(drop_path_rate=math.nan), ValueError, r"drop_path_rate must be a finite float in \[0, 1\).*got nan"),
    (dict(drop_path_rate=-0.1), ValueError, r"drop_path_rate must be a finite float in \[0, 1\).*got -0\.1"),
    (dict(drop_path_rate=1.0), ValueError, r"drop_path_rate must be a finite float in \[0, 1\).*got 1\.0"),
    (dict(drop_path_rate="0.1"), TypeError, r"drop_path_rate must be a finite float.*got '0\.1' \(str\)"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS)
def test_create_model_checks_arguments_before_building(kwargs, error, message, monkeypatch):
    def refuse(*args, **kw):
        raise AssertionError("built before the arguments were checked")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    with pytest.raises(error, match=message):
        convscope.create_model("convnext_atto", **kwargs)


@pytest.mark.parametrize(("size", "error", "message"), [
    ("abc", TypeError, r"img_size must be an int or a pair of ints \(H, W\); got 'abc' \(str\)"),
    ((224, 224, 3), TypeError, r"img_size must be an int or a pair of ints \(H, W\); got \(224, 224, 3\)"),
    (224.0, TypeError, r"img_size must be an int or a pair of ints \(H, W\); got 224\.0 \(float\)"),
    (True, TypeError, r"img_size must be an int or a pair of ints \(H, W\); got True \(bool\)"),
    (0, ValueError, r"img_size must be positive; got 0"),
    ((224, -32), ValueError, r"img_size must be positive; got \(224, -32\)"),
])
def test_create_model_checks_img_size(size, error, message):
    with pytest.raises(error, match=message):
        convscope.create_model("transnext_micro", img_size=size)


def test_create_model_takes_the_edges_of_the_ranges():
    with torch.device("meta"):
        m = convscope.create_model("convnext_atto", num_classes=0, in_chans=1, drop_path_rate=0.5)
        assert m.num_classes == 0 and m.in_chans == 1
        assert convscope.create_model("transnext_micro", img_size=(256, 192)).traits.fixed_input_size == (256, 192)
