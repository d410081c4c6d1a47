"""The family-declaration API: one register_family call declares a family, its variants, cards and spec."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import convscope
from convscope.models import (
    ArchSpec,
    Card,
    ConvScopeModel,
    Paper,
    create_model,
    family_of,
    list_models,
    model_arch,
    model_card,
    register_family,
    variant,
)
from convscope.models.registry import _unregister_family
from convscope.models.traits import hierarchy

SRC = Path(convscope.__file__).parent


class ToyNet(ConvScopeModel):
    """Two stages of 3x3 convs: just enough of the contract for the registry."""

    @classmethod
    def traits_for(cls, *, dims):
        return hierarchy(dims)

    def __init__(self, depths=(1, 1), dims=(8, 16), *, in_chans=3, num_classes=1000, drop_path_rate=0.0):
        super().__init__(in_chans, num_classes)
        self.traits = ToyNet.traits_for(dims=dims)
        self.stem = nn.Conv2d(in_chans, dims[0], 4, stride=4)
        self.build_stages(depths, dims, drop_path_rate, downsample=lambda i: nn.Conv2d(dims[i - 1], dims[i], 2, 2),
                          block=lambda i, j, dp: nn.Conv2d(dims[i], dims[i], 3, padding=1))
        self.head = convscope.layers.ClassifierHead(dims[-1], num_classes)


@contextlib.contextmanager
def toy_family(**kwargs):
    fam = register_family("toynet", ToyNet, paper=Paper("Toy", "2401.00001", "me/toy"), **kwargs)
    try:
        yield fam
    finally:
        _unregister_family("toynet")


def test_one_call_registers_everything():
    with toy_family(variants={"toynet_s": variant(dims=(8, 16), aliases=("toy_small",),
                                                  card=Card(params_m=0.01, macs_g=0.001, crop_pct=0.9,
                                                            input_size=(3, 64, 64))),
                              "toynet_m": variant(dims=(16, 32), card=Card(params_m=0.02, macs_g=0.002))},
                    arch=dict(depths=(1, 2)), card=Card(source="made up")):
        assert list_models("toynet*") == ["toynet_m", "toynet_s"]
        card = model_card("toy_small")
        assert (card.name, card.family, card.paper, card.arxiv, card.repo) == ("toynet_s", "toynet", "Toy",
                                                                              "2401.00001", "me/toy")
        assert card.source == "made up" and card.timm_name is None
        assert card.pretrained_cfg.crop_pct == 0.9 and card.input_size == (3, 64, 64)
        assert model_card("toynet_m").pretrained_cfg.crop_pct == 0.875  # the default config
        assert model_arch("toynet_m") == dict(depths=(1, 2), dims=(16, 32))
        assert family_of("toynet_s").spec == ArchSpec()
        m = create_model("toynet_m", num_classes=5)
        assert [len(s.blocks) for s in m.stages] == [1, 2] and m.feature_info[1]["num_chs"] == 32
        assert m.pretrained_cfg["crop_pct"] == 0.875 and m(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert not list_models("toynet*")


def test_declaration_errors_name_the_problem():
    with pytest.raises(TypeError, match="unexpected keyword argument 'param_m'"):
        variant(depths=(1, 1), card=Card(param_m=1.0))
    with pytest.raises(TypeError, match=r"variant\(card=...\) must be a Card\(...\).*got dict"):
        variant(depths=(1, 1), card=dict(params_m=1.0, macs_g=1.0))
    with pytest.raises(TypeError, match=r"register_family\(card=...\) must be a Card"):
        register_family("toynet", ToyNet, paper=Paper("Toy", "2401.00001", "me/toy"), card=dict(source="x"),
                        variants={"toynet_x": variant(card=Card(params_m=1.0, macs_g=1.0))})
    with pytest.raises(ValueError, match="'convnext_tiny' is registered twice"):
        register_family("toynet", ToyNet, paper=Paper("Toy", "2401.00001", "me/toy"),
                        variants={"convnext_tiny": variant(card=Card(params_m=1.0, macs_g=1.0))})
    with pytest.raises(ValueError, match="family 'convnext' is registered twice"):
        register_family("convnext", ToyNet, paper=Paper("Toy", "2401.00001", "me/toy"),
                        variants={"toynet_x": variant(card=Card(params_m=1.0, macs_g=1.0))})
    with pytest.raises(ValueError, match="crop_pct"):
        with toy_family(variants={"toynet_s": variant(card=Card(params_m=1.0, macs_g=1.0, crop_pct=1.5))}):
            pass
    assert not list_models("toynet*")


def test_every_variant_name_is_written_literally_once():
    """`grep -rn NAME src/` finds each variant's declaration: no name is assembled with an f-string."""
    text = "\n".join(p.read_text() for p in (SRC / "models").glob("*.py") if p.name != "registry.py")
    for name in list_models():
        assert len(re.findall(rf'^\s+"{name}": variant\(', text, re.M)) == 1, name


def test_family_files_keep_no_registration_loop():
    for path in (SRC / "models").glob("*.py"):
        text = path.read_text()
        assert "def _register" not in text and not re.search(r"^for _?\w+ in ", text, re.M), path.name


def test_arch_spec_rebuilds_per_block_and_input_size_options():
    spec = family_of("unireplknet_t").spec
    arch = model_arch("unireplknet_t")
    out = spec.rebuild(arch, (2, 2, 5, 2), (40, 80, 160, 320))
    assert out["kernel_sizes"] == ((3, 3), (13, 13), (13, 3, 13, 3, 13), (13, 13))
    rand = family_of("randformer_s12").spec
    kw = rand.rebuild(model_arch("randformer_s12"), (2, 2, 6, 2), (64, 128, 320, 512), input_hw=(256, 320))
    assert kw["mixer_kwargs"][2:] == (dict(num_tokens=16 * 20), dict(num_tokens=8 * 10))
    assert family_of("caformer_s18").spec.quanta(model_arch("caformer_s18")) == [8, 8, 32, 32]
    assert family_of("hornet_tiny_gf").spec.quanta(model_arch("hornet_tiny_gf")) == [8, 8, 16, 32]
    assert family_of("replknet_xl").spec.quanta(model_arch("replknet_xl")) == [16] * 4
