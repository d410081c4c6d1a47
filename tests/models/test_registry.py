"""The registry and the public API: names, cards, errors."""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.models import ModelCard, UnknownModelError, list_models, model_card

FOUNDATION = {
    "convnext": ["convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny",
                 "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge"],
    "convnextv2": ["convnextv2_atto", "convnextv2_femto", "convnextv2_pico", "convnextv2_nano", "convnextv2_tiny",
                   "convnextv2_base", "convnextv2_large", "convnextv2_huge"],
}


@pytest.mark.parametrize("family", sorted(FOUNDATION))
def test_family_variants_registered(family):
    registered = set(list_models(family=family))
    assert set(FOUNDATION[family]) <= registered


def test_list_models_pattern():
    assert list_models("convnext_t*") == ["convnext_tiny"]
    assert list_models("CONVNEXT_TINY") == ["convnext_tiny"]
    assert list_models("no_such_*") == []
    assert list_models() == sorted(list_models())


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownModelError, match=r"unknown model 'convnxt_tiny'.*convnext_tiny"):
        convscope.create_model("convnxt_tiny")
    with pytest.raises(ValueError):  # UnknownModelError is a ValueError
        model_card("resnet9000")


def test_pretrained_takes_a_release_or_a_file():
    with pytest.raises(TypeError, match="pretrained must be True, a release tag, 'hf-hub:org/repo', a URL or a file"):
        convscope.create_model("convnext_atto", pretrained=3)
    with pytest.raises(ValueError, match="no weights file at /nonexistent/weights.safetensors"):
        convscope.create_model("convnext_atto", pretrained="/nonexistent/weights.safetensors")


@pytest.mark.parametrize("name", list_models())
def test_card_is_complete(name):
    card = model_card(name)
    assert isinstance(card, ModelCard) and card.name == name
    assert card.family and card.paper and card.repo and card.source
    assert card.arxiv.count(".") == 1 and card.arxiv.replace(".", "").isdigit(), card.arxiv
    assert card.params_m > 0
    assert card.macs_g is None or card.macs_g > 0
    c, h, w = card.input_size
    assert c == 3 and h >= 32 and w >= 32
    assert card.top1 is None or 50 < card.top1 < 100
    cfg = card.pretrained_cfg
    assert len(cfg.mean) == 3 and len(cfg.std) == 3 and 0 < cfg.crop_pct <= 1 and cfg.input_size == card.input_size


def test_drop_path_rate_reaches_blocks():
    m = convscope.create_model("convnext_atto", drop_path_rate=0.3)
    rates = [mod.drop_prob for mod in m.modules() if type(mod).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.3) and rates == sorted(rates)
    m0 = convscope.create_model("convnext_atto")
    assert not [mod for mod in m0.modules() if type(mod).__name__ == "DropPath"]


def test_pretrained_cfg_matches_card():
    m = convscope.create_model("convnext_tiny", num_classes=10)
    card = model_card("convnext_tiny")
    assert m.pretrained_cfg["input_size"] == card.input_size and m.pretrained_cfg["num_classes"] == 10
    assert m.card is card and m.model_name == "convnext_tiny"


def test_meta_device_build_costs_nothing():
    with torch.device("meta"):
        m = convscope.create_model("convnextv2_huge")
    assert all(p.is_meta for p in m.parameters())
