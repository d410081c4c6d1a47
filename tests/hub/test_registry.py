"""The weights registry: every entry well formed, every registered variant either has a release or a reason, and the
converter each release names loads a state dict with the release's exact keys and shapes (key lists recorded from
the official code in tests/data/official_keys; timm-key releases load as they are, which tests/models/
test_fidelity.py checks against timm, and CvT's transformers converter is checked against transformers in
tests/models/test_cvt.py)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import convscope
from convscope.models import pretrained as hub
from convscope.models.pretrained.registry import HUB, MANUAL, OFFICIAL, TIMM, URL
from convscope.models.registry import official_converter

FIXTURES = Path(__file__).parents[1] / "data" / "official_keys"


def test_every_release_is_well_formed():
    models = set(convscope.list_models())
    problems = []
    for r in hub.RELEASES:
        card = convscope.model_card(r.model) if r.model in models else None
        if card is None:
            problems.append(f"{r.tag}: {r.model} is not a registered variant")
            continue
        if r.keys == TIMM and card.timm_name is None:
            problems.append(f"{r.tag}: timm keys for {r.model}, which timm does not carry")
        if r.keys != TIMM and official_converter(card.family, r.keys) is None:
            problems.append(f"{r.tag}: no {r.keys} converter for {card.family}")
        if r.source in (URL, MANUAL) and not r.location.startswith("https://"):
            problems.append(f"{r.tag}: {r.location} is not https")
        if r.source == HUB and r.keys == TIMM and r.location != f"timm/{r.tag}":
            problems.append(f"{r.tag}: timm's Hub repository is timm/<tag>, not {r.location}")
        if r.arch not in (r.model, card.timm_name):
            problems.append(f"{r.tag}: the tag's architecture is neither {r.model} nor timm's {card.timm_name}")
    assert problems == []
    assert [t for t, n in Counter((r.model, r.tag) for r in hub.RELEASES).items() if n > 1] == []


def test_every_variant_has_weights_or_a_reason():
    with_weights = {r.model for r in hub.RELEASES}
    without = {n: hub.WITHOUT_WEIGHTS[n] for n in convscope.list_models() if n not in with_weights}
    print("variants without weights:", *(f"{n}: {why}" for n, why in sorted(without.items())), sep="\n  ")
    assert set(without) == set(hub.WITHOUT_WEIGHTS), "a variant lacks both a release and a reason, or has both"
    assert (len(with_weights), len(without), len(hub.RELEASES)) == (150, 24, 362)
    assert Counter(r.source for r in hub.RELEASES) == {HUB: 272, URL: 66, MANUAL: 24}
    assert sorted({hub.WITHOUT_WEIGHTS[n].split(" (")[0].split(";")[0] for n in without}) == [
        "TensorFlow checkpoints only",
        "a benchmark configuration of the MetaFormer skeleton with a swapped token mixer",
        "timm lists it as untrained"]


def _official_release_families() -> dict[str, hub.Release]:
    """family -> its first official-key release."""
    out: dict[str, hub.Release] = {}
    for r in hub.RELEASES:
        if r.keys == OFFICIAL:
            out.setdefault(convscope.model_card(r.model).family, r)
    return out


def _one_fixture_per_family() -> list[str]:
    """The smallest recorded official key list of every family that has official-key releases."""
    families = _official_release_families()
    chosen: dict[str, str] = {}
    for f in sorted(FIXTURES.glob("*.json"), key=lambda p: p.stat().st_size):
        if convscope.model_card(f.stem).family in families:
            chosen.setdefault(convscope.model_card(f.stem).family, f.stem)
    return sorted(chosen.values())


@pytest.mark.parametrize("name", _one_fixture_per_family())
def test_release_converter_takes_the_official_keys(name):
    spec = json.loads((FIXTURES / f"{name}.json").read_text())
    official = {k: torch.empty(shape, device="meta") for k, shape in spec["keys"].items()}
    release = next((r for r in hub.releases(name) if r.keys == OFFICIAL), None)
    if release is None:   # the family's official release is of another variant: same converter, this key list
        release = replace(_official_release_families()[convscope.model_card(name).family], model=name)
    hub.check_release_keys(release, official)          # raises on any missing, extra or misshapen key
    official.popitem()
    with pytest.raises(ValueError, match=f"weights do not fit {name}"):
        hub.check_release_keys(release, official)


def test_official_fixtures_cover_every_family_with_official_releases():
    families = set(_official_release_families())
    assert {convscope.model_card(n).family for n in _one_fixture_per_family()} == families
    assert len(families) == 19


def test_lookups():
    assert hub.list_pretrained("convnext_atto*") == ["convnext_atto.d2_in1k"]
    assert hub.find_release("inception_next_base_384").tag == "inception_next_base.sail_in1k_384"
    assert hub.find_release("unireplknet_b", "official_in22k").filename == "unireplknet_b_in22k_pretrain.pth"
    with pytest.raises(ValueError, match="unknown weights tag 'convnext_atto.d2_in1x'; did you mean convnext_atto"):
        hub.release_by_tag("convnext_atto.d2_in1x")
