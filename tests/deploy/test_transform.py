"""The deploy transform protocol: re-parameterisation as its first instance."""
from __future__ import annotations

import pytest
import torch

from convscope import create_model, reparameterize_model
from convscope.deploy import REPARAMETERIZE, TRANSFORMS, ModelTransform, get_transform, transform


def test_reparameterize_is_a_registered_transform():
    assert TRANSFORMS["reparameterize"] is REPARAMETERIZE and isinstance(REPARAMETERIZE, ModelTransform)
    with pytest.raises(ValueError, match="unknown deploy transform 'fold'.*reparameterize"):
        get_transform("fold")


def test_transform_copies_and_matches_reparameterize_model():
    torch.manual_seed(0)
    model = create_model("unireplknet_a", num_classes=10).eval()
    with torch.device("meta"):
        assert REPARAMETERIZE.applies_to(create_model("unireplknet_a"))
        assert not REPARAMETERIZE.applies_to(create_model("convnext_atto"))
    x = torch.randn(2, 3, 64, 64)
    a, b = transform(model, "reparameterize"), reparameterize_model(model)
    assert a is not model and torch.equal(a(x), b(x))
    before = {k: v.clone() for k, v in a.state_dict().items()}
    REPARAMETERIZE.apply(a)  # idempotent
    assert before.keys() == a.state_dict().keys() and all(torch.equal(before[k], v) for k, v in a.state_dict().items())
    torch.testing.assert_close(a(x), model(x), rtol=1e-4, atol=1e-4)


def test_match_checkpoint_brings_a_model_to_the_checkpoint_form():
    deployed = reparameterize_model(create_model("unireplknet_a", num_classes=10))
    fresh = create_model("unireplknet_a", num_classes=10)
    REPARAMETERIZE.match_checkpoint(fresh, deployed.state_dict().keys())
    assert fresh.state_dict().keys() == deployed.state_dict().keys()
