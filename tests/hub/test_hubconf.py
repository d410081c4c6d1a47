"""hubconf.py: torch.hub finds one entry per registered variant in the repository, and each builds it through
create_model (kwargs and pretrained passed on)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import convscope
from convscope.models import save_weights

REPO = str(Path(__file__).resolve().parents[2])


def test_one_entry_per_variant():
    """What torch.hub.list reports for a repository: the public callables of its hubconf."""
    spec = importlib.util.spec_from_file_location("hubconf_under_test", Path(REPO) / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = [f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_")]
    assert sorted(entries) == sorted(convscope.list_models())
    assert module.dependencies == ["torch"]


def test_load_builds_the_variant_with_its_kwargs(tmp_path):
    model = torch.hub.load(REPO, "convnext_atto", source="local", pretrained=False)
    assert type(model).__name__ == "ConvNeXt" and model.num_classes == 1000
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in convscope.create_model("convnext_atto").parameters())
    torch.manual_seed(0)
    source = convscope.create_model("convnext_atto", num_classes=3)
    path = save_weights(source, tmp_path / "w.safetensors")
    loaded = torch.hub.load(REPO, "convnext_atto", source="local", pretrained=str(path), num_classes=3)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())
