"""Which module is running: forward hooks on every submodule of a model keep the stack of open forwards, for
counting (which module ran an aten call) and profiling (which module a time belongs to)."""
from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle


class ModuleTracker:
    """`with ModuleTracker(model) as tracker:` installs a forward pre-hook and a forward hook on every module of
    `model` (each shared module once) and removes them on exit; `install()` / `remove()` do the same by hand.

    Modules are named by their qualified names in `model`, the model itself `root`. `path` and `type_name` name
    the innermost module whose forward is running, the model itself outside any forward. Subclasses act on
    entering and leaving a forward by overriding `on_enter` / `on_exit`; the exit hook runs also when a
    forward raises (`always_call=True`), so the stack stays balanced.
    """

    def __init__(self, model: nn.Module, root: str = "") -> None:
        self.root = root
        self.modules: dict[str, nn.Module] = {name or root: mod for name, mod in model.named_modules()}
        self.stack: list[str] = []
        self._handles: list[RemovableHandle] = []

    @property
    def path(self) -> str:
        return self.stack[-1] if self.stack else self.root

    @property
    def type_name(self) -> str:
        return type(self.modules[self.path]).__name__

    def on_enter(self, path: str, module: nn.Module, args: tuple) -> None:
        """Called when `module`'s forward starts, after it became the current module."""

    def on_exit(self, path: str, module: nn.Module) -> None:
        """Called when `module`'s forward ends, before its parent becomes the current module again."""

    def install(self) -> ModuleTracker:
        for path, mod in self.modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._pre_hook(path)))
            self._handles.append(mod.register_forward_hook(self._post_hook(path), always_call=True))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> ModuleTracker:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def _pre_hook(self, path: str):
        def pre(mod: nn.Module, args: tuple) -> None:
            self.stack.append(path)
            self.on_enter(path, mod, args)
        return pre

    def _post_hook(self, path: str):
        def post(mod: nn.Module, args: tuple, output: Any) -> None:
            self.on_exit(path, mod)
            if self.stack:
                self.stack.pop()
        return post
