"""torch.hub entry points: one per registered convscope variant.

    model = torch.hub.load("<owner>/convscope", "convnext_atto", pretrained=True, num_classes=10)

Each entry calls `convscope.create_model(name, pretrained=..., **kwargs)`: `pretrained` is False (random init), True
(the variant's default release), a release tag, "hf-hub:org/repo", a URL or a file (docs/weights.md); the keyword
arguments are create_model's (num_classes, in_chans, drop_path_rate, features_only, ...).
"""
from __future__ import annotations

import os
import sys

dependencies = ["torch"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:   # a checkout (torch.hub's download) is not installed
    sys.path.insert(0, _SRC)

from convscope.models import create_model as _create_model  # noqa: E402  (no public name but the entries)
from convscope.models import list_models as _list_models  # noqa: E402


def _entry(name: str):
    def entry(pretrained=False, **kwargs):
        return _create_model(name, pretrained=pretrained if pretrained is not False else None, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"convscope's {name} (create_model({name!r}, pretrained=..., **kwargs)); pretrained: False, "
                     "True (the default release), a release tag, 'hf-hub:org/repo', a URL or a file.")
    return entry


for _name in _list_models():
    globals()[_name] = _entry(_name)
del _name
