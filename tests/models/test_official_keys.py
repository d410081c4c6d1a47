"""`load_checkpoint(..., source="official")` against the official repositories' state-dict layouts.

The fixtures in tests/data/official_keys list each official model's key names and shapes, recorded from the
official code by benchmarks/official_parity.py (which also compares logits with that code).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import convscope
from convscope.models import load_checkpoint

#: official buffer names that converters drop because the model derives them (integer index tables)
DERIVED_BUFFERS = ("attention_bias_idxs",)
FIXTURES = sorted((Path(__file__).parents[1] / "data" / "official_keys").glob("*.json"))


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_official_state_dict_loads_strictly(fixture):
    spec = json.loads(fixture.read_text())
    # Every official tensor gets a distinct value, so we can see where each one landed.
    official = {k: torch.full(shape, float(i)) for i, (k, shape) in enumerate(spec["keys"].items())}
    with torch.device("meta"):
        model = convscope.create_model(fixture.stem)
    load_checkpoint(model, official, source="official")  # strict: raises on any missing/extra/misshapen key
    ours = model.state_dict()
    assert not any(t.is_meta for t in ours.values())
    landed = sorted(int(t.flatten()[0].item()) for t in ours.values() if t.is_floating_point() and t.numel())
    assert landed == sorted(set(landed)), "two of our tensors came from the same official tensor"
    # index tables the model recomputes from its configuration (LSNet's attention_bias_idxs) are not weights
    derived = [k for k in official if k.rsplit(".", 1)[-1] in DERIVED_BUFFERS]
    assert len(landed) == sum(1 for k in official if official[k].numel()) - len(derived), \
        "an official tensor was dropped"


def test_auto_source_detects_official_keys():
    spec = json.loads((FIXTURES[0]).read_text())
    official = {k: torch.zeros(shape) for k, shape in spec["keys"].items()}
    with torch.device("meta"):
        model = convscope.create_model(FIXTURES[0].stem)
    load_checkpoint(model, official)  # source="auto"


def test_timm_source_refused_for_families_timm_lacks():
    model = convscope.create_model("identityformer_s12")
    with pytest.raises(ValueError, match="timm does not carry"):
        load_checkpoint(model, model.state_dict(), source="timm")


def test_mismatch_names_keys_and_shapes():
    model = convscope.create_model("convnext_atto")
    sd = model.state_dict()
    sd.pop("stem.0.weight")
    sd["head.fc.weight"] = torch.zeros(10, 320)
    with pytest.raises(ValueError, match=r"missing keys \(stem.0.weight\).*head.fc.weight: checkpoint \(10, 320\)"):
        load_checkpoint(model, sd)
