"""The optional dependencies (the `lab` extra: matplotlib, rich, Pillow, PyYAML) and the one-line error that names the
extra to install when a command needs one that is missing.

A core install (`pip install convscope`: torch, numpy, safetensors) runs every command; what needs an extra either
checks for it before doing any work (`require`) or does without it and says so once (`available`).
"""
from __future__ import annotations

import importlib.util
import sys

EXTRAS = {"matplotlib": "matplotlib", "rich": "rich", "PIL": "pillow", "yaml": "pyyaml"}
INSTALL_HINT = "pip install 'convscope[lab]'"


def available(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_message(module: str, purpose: str) -> str:
    return f"{purpose} needs {EXTRAS.get(module, module)}, which is not installed: {INSTALL_HINT}"


def require(module: str, purpose: str) -> None:
    """ValueError (one line, naming the extra) unless `module` is installed."""
    if not available(module):
        raise ValueError(missing_message(module, purpose))
