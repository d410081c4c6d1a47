"""Training checkpoints in safetensors and JSON, written atomically, loaded without unpickling anything.

A run directory holds:

    checkpoints/step-00000468/   one directory per checkpoint, the last `keep_last` kept
        model.safetensors        the weights, with the model description in the safetensors metadata
        optimizer.safetensors    the optimizer's tensors (AdamW moments and step counts)
        rng.safetensors          torch (and CUDA) generator states, one per rank
        <name>.safetensors       a callback's tensors, e.g. ema.safetensors: the EMA weights (when EMA is on)
        state.json               epoch, step, schedule, data order, the callbacks' states (metric history, best
                                 score, ...), optimizer hyper-parameters, numpy and python RNG states
    best.safetensors             the weights that scored best so far (self-describing, for eval/predict)
    last.safetensors             the final weights

The self-describing weights files (`save_model_file`, `read_meta`, `load_model`) are `convscope.models.source`'s.
Every file goes through a temporary file, fsync and rename (weights through `models.weights.save_weights`), and a
checkpoint directory is itself assembled under a temporary name and renamed into place, so a crash at any moment
leaves either the previous complete checkpoint or the new complete one, never a partial one.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..files import atomic_write_json, fsync_dir, read_json
from ..models.source import read_meta, save_model_file
from ..models.weights import save_weights

STATE_FORMAT = "convscope-train-state/2"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_TENSOR_FILE = re.compile(r"^[a-z][a-z0-9_]*$")
_OWN_FILES = frozenset({"model", "optimizer", "rng"})


# -- RNG and optimizer state as tensors + JSON -------------------------------------------------------------------
def rng_state_json() -> dict[str, Any]:
    """numpy's and python's global generator states as JSON."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    version, internal, gauss = random.getstate()
    return {"numpy": np_state, "python": [version, list(internal), gauss]}


def set_rng_state_json(state: Mapping[str, Any]) -> None:
    np_state = json.loads(json.dumps(state["numpy"]))
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def optimizer_to_tensors(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (`state.<param id>.<name>`) and JSON (the rest)."""
    tensors, scalars = {}, {}
    for pid, st in state_dict["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: Mapping[str, torch.Tensor], js: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in js.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = []
    for g in js["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# -- checkpoint directories --------------------------------------------------------------------------------------
@dataclass
class TrainingCheckpoint:
    """A checkpoint as loaded: tensors from safetensors, the rest from state.json."""

    path: Path
    model: dict[str, torch.Tensor]
    tensors: dict[str, dict[str, torch.Tensor]]   # the callbacks' tensors by callback name (e.g. "ema")
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]


class CheckpointManager:
    """Writes checkpoint directories atomically under `directory`, keeps the newest `keep_last`."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1; got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def list(self) -> list[Path]:
        """Complete checkpoints, oldest first (partial ones never carry the final name)."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
        return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None

    def clean_partial(self) -> None:
        """Remove what a crash mid-save left behind (temporary directories)."""
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if p.name.startswith(".tmp-") or p.name.startswith(".old-"):
                    shutil.rmtree(p, ignore_errors=True)

    def save(self, step: int, *, model: Mapping[str, torch.Tensor], optimizer: Mapping[str, Any],
             state: Mapping[str, Any], meta: Mapping[str, Any], rng: Mapping[str, torch.Tensor],
             tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> Path:
        """Write checkpoint `step` and prune old ones; returns its directory. `tensors` maps a name to the
        tensors of `<name>.safetensors`, which carries the model description `meta` too (ema.safetensors is a
        weights file eval and predict take)."""
        tensors = dict(tensors or {})
        bad = [n for n in tensors if not _TENSOR_FILE.match(n) or n in _OWN_FILES]
        if bad:
            raise ValueError(f"checkpoint tensor names must be lower-case identifiers other than "
                             f"{sorted(_OWN_FILES)}; got {bad}")
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:08d}"
        tmp = self.directory / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save_model_file(tmp / "model.safetensors", model, dict(meta, weights="model"))
            for group, values in tensors.items():
                save_model_file(tmp / f"{group}.safetensors", values, dict(meta, weights=group))
            opt_tensors, opt_json = optimizer_to_tensors(optimizer)
            save_weights(opt_tensors, tmp / "optimizer.safetensors")
            save_weights(dict(rng), tmp / "rng.safetensors")
            atomic_write_json(tmp / "state.json", dict(state, format=STATE_FORMAT, optimizer=opt_json,
                                                       tensor_files=sorted(tensors)))
            fsync_dir(tmp)
            final = self.directory / name
            old = None
            if final.exists():   # the same step saved again: swap the directories
                old = self.directory / f".old-{name}-{os.getpid()}"
                os.rename(final, old)
            os.rename(tmp, final)
            fsync_dir(self.directory)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()
        return final

    def prune(self) -> None:
        for p in self.list()[:-self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)

    def load_newest_intact(self, report=None) -> TrainingCheckpoint:
        """The newest checkpoint that loads completely; each damaged newer one is reported (`report(msg)`) and
        passed over. FileNotFoundError when there is none, ValueError when none is intact."""
        found = self.list()
        if not found:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.directory}")
        problems = []
        for i, path in enumerate(reversed(found)):
            try:
                ck = self.load(path)
            except Exception as e:  # safetensors, JSON, missing files: a damaged checkpoint, whatever the error
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                problems.append(f"{path.name} ({reason})")
                if report is not None and i + 1 < len(found):
                    report(f"checkpoint {path} is damaged ({reason}); trying the one before it")
                continue
            if problems and report is not None:
                report(f"resuming from {path.name}, the newest intact checkpoint")
            return ck
        raise ValueError(f"no intact checkpoint in {self.directory}: " + "; ".join(problems))

    def load(self, path: str | os.PathLike | None = None) -> TrainingCheckpoint:
        """Load a checkpoint directory (default: the latest)."""
        path = Path(path) if path is not None else self.latest()
        if path is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.directory}")
        if not (path / "state.json").is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint directory (no state.json)")
        state = read_json(path / "state.json")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: unsupported state format {state.get('format')!r}; expected {STATE_FORMAT}")
        opt_json = state.pop("optimizer")
        names = state.pop("tensor_files")
        if not all(isinstance(n, str) and _TENSOR_FILE.match(n) and n not in _OWN_FILES for n in names):
            raise ValueError(f"{path}: state.json names impossible tensor files {names!r}")
        return TrainingCheckpoint(
            path=path, model=load_file(str(path / "model.safetensors")),
            tensors={n: load_file(str(path / f"{n}.safetensors")) for n in names},
            optimizer=optimizer_from_tensors(load_file(str(path / "optimizer.safetensors")), opt_json),
            rng=load_file(str(path / "rng.safetensors")), state=state,
            meta=read_meta(path / "model.safetensors", registered=False))
