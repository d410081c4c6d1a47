"""ModuleTracker: the innermost running module by path and type, hooks gone on exit, balanced after an error."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.analysis.module_tracker import ModuleTracker


class Probe(nn.Module):
    """Notes where the tracker says it is when its forward runs."""

    def __init__(self, seen: list) -> None:
        super().__init__()
        self.seen = seen
        self.tracker: ModuleTracker | None = None

    def forward(self, x):
        self.seen.append((self.tracker.path, self.tracker.type_name))
        return x


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def _model(seen: list) -> nn.Module:
    return nn.Sequential(Probe(seen), nn.Sequential(nn.Identity(), Probe(seen)))


def test_path_and_type_of_the_running_module():
    seen: list = []
    model = _model(seen)
    calls = []

    class Recording(ModuleTracker):
        def on_enter(self, path, module, args):
            calls.append(("enter", path, self.path, tuple(args[0].shape)))

        def on_exit(self, path, module):
            calls.append(("exit", path, self.path))

    with Recording(model, root="<model>") as tracker:
        model[0].tracker = model[1][1].tracker = tracker
        assert (tracker.path, tracker.type_name) == ("<model>", "Sequential")
        model(torch.zeros(2, 3))
        assert tracker.stack == []
    assert seen == [("0", "Probe"), ("1.1", "Probe")]
    assert list(tracker.modules) == ["<model>", "0", "1", "1.0", "1.1"]
    assert [c[:2] for c in calls] == [("enter", "<model>"), ("enter", "0"), ("exit", "0"), ("enter", "1"),
                                      ("enter", "1.0"), ("exit", "1.0"), ("enter", "1.1"), ("exit", "1.1"),
                                      ("exit", "1"), ("exit", "<model>")]
    assert all(c[1] == c[2] for c in calls)  # the module itself is current in its own enter / exit


def test_hooks_are_removed_and_the_stack_stays_balanced_after_an_error():
    model = nn.Sequential(nn.Identity(), nn.Sequential(Boom()))
    tracker = ModuleTracker(model).install()
    assert all(m._forward_pre_hooks and m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.zeros(1))
    assert tracker.stack == [] and tracker.path == ""
    tracker.remove()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
