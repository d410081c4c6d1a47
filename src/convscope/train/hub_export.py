"""A finished run as a Hugging Face Hub model folder in timm's layout, and pushing it.

`export_hub(run, out)` writes config.json (architecture, num_classes, in_chans, model_args, label_names and the
pretrained_cfg a user preprocesses with), model.safetensors (the run's best weights, else its last, in convscope's
keys, which are timm's where timm carries the family) and README.md (a model card: the data, the recipe and the
metrics read from the run). `create_model(name, pretrained=out)` or, once pushed (`push_to_hub`: huggingface_hub's
`upload_folder`), `pretrained="hf-hub:org/repo"` loads it back.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..extras import available
from ..files import atomic_write_json, atomic_write_text, check_output_dir, read_json
from ..models import create_model, save_weights
from ..models.source import check_finite, read_meta, resolve_weights_file
from .config import NON_SEMANTIC

HUB_FILES = ("config.json", "model.safetensors", "README.md")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a Hub model repository id ('org/name'); ValueError in one line otherwise."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id or len(repo_id) > 96:
        raise ValueError(f"a Hub repository id is 'org/name' (letters, digits, '.', '_', '-'); got {repo_id!r}")
    return repo_id


def _run_files(run: Path) -> tuple[Path, dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The run's weights file (best, else last), its description, its config.json and metrics.jsonl records."""
    if not run.is_dir():
        raise ValueError(f"{run} is not a run directory (expected the --out of `convscope train`)")
    weights = resolve_weights_file(run)
    meta = read_meta(weights)
    if meta.get("pruning"):
        raise ValueError(f"{weights} holds a pruned model: its widths are not {meta['model']}'s, so the Hub "
                         "layout (architecture + weights) cannot describe it")
    config = read_json(run / "config.json") if (run / "config.json").is_file() else {}
    metrics = []
    if (run / "metrics.jsonl").is_file():
        for i, line in enumerate((run / "metrics.jsonl").read_text().splitlines(), 1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                raise ValueError(f"{run / 'metrics.jsonl'}: line {i} is not JSON") from None
            if isinstance(record, dict):
                metrics.append(record)
    return weights, meta, config if isinstance(config, dict) else {}, metrics


def hub_config(meta: dict[str, Any]) -> dict[str, Any]:
    """timm's config.json for a run's weights: the variant's pretrained_cfg with the run's preprocessing (input
    size, mean, std, centre crop; bilinear resizing, as convscope's evaluation transform)."""
    with torch.device("meta"):
        model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                             **meta.get("model_kwargs", {}))
    pretrained_cfg = dict(model.pretrained_cfg, input_size=[meta["in_chans"], *meta["input_size"]],
                          interpolation="bilinear", mean=list(meta["mean"]), std=list(meta["std"]),
                          crop_pct=meta["crop_pct"])
    return dict(architecture=meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                num_features=model.num_features, model_args=dict(meta.get("model_kwargs", {})),
                label_names=list(meta["class_names"]), pretrained_cfg=pretrained_cfg)


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| setting | value |", "|---|---|", *(f"| {k} | {json.dumps(v)} |" for k, v in rows)]


def model_card(config: dict[str, Any], meta: dict[str, Any], run_config: dict[str, Any],
               metrics: list[dict[str, Any]], weights_name: str, repo_id: str | None = None) -> str:
    """README.md: what the weights are, the data, the recipe (the run's settings that change what it computes) and
    the metrics, all read from the run, with the lines that load the weights (from `repo_id` on the Hub)."""
    name, n = config["architecture"], config["num_classes"]
    args = "".join(f", {k}={v!r}" for k, v in config["model_args"].items())
    source = f"hf-hub:{repo_id}" if repo_id else "path/to/this/folder"
    scores = {k: v for k, v in meta.items() if k in ("top1", "top5", "loss", "epoch", "step")}
    lines = ["---", "library_name: convscope", "tags:", "- image-classification", "- convscope", "---", "",
             f"# {name} trained on {meta.get('data', run_config.get('data', 'its data'))}", "",
             f"`{name}` ({config['in_chans']} input channels, {n} classes) trained with `convscope train`; the "
             f"weights are the run's `{weights_name}` ({meta.get('weights', 'model') or 'model'} weights).", "",
             "## Data", "", f"- data: `{meta.get('data', run_config.get('data'))}`",
             f"- classes ({n}): {', '.join(config['label_names'])}",
             f"- input: {config['in_chans']}x{meta['input_size'][0]}x{meta['input_size'][1]}, mean "
             f"{config['pretrained_cfg']['mean']}, std {config['pretrained_cfg']['std']}, centre crop "
             f"{meta['crop_pct']}", "", "## Recipe", ""]
    recipe = [(k, v) for k, v in run_config.items() if k not in NON_SEMANTIC]
    lines += _table(recipe) if recipe else ["(the run has no config.json)"]
    lines += ["", "## Metrics", "", f"Weights file scores: {json.dumps(scores)}", ""]
    if metrics:
        keys = [k for k in metrics[-1] if isinstance(metrics[-1][k], (int, float))]
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in metrics]
    lines += ["", "## Use", "", "```python", "import convscope", "",
              f"model = convscope.create_model({name!r}, pretrained={source!r}, num_classes={n}, "
              f"in_chans={config['in_chans']}{args})", "```", ""]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def export_hub(run: str | os.PathLike, out: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Write the Hub folder of a `convscope train` run directory into `out` (see the module docstring; `repo_id`:
    the repository the model card's example loads from); every file atomically. ValueError in one line for a
    directory that is no run, or weights that are not finite, before anything is written."""
    run = Path(run)
    out = check_output_dir(out, "--out")
    if repo_id is not None:
        check_repo_id(repo_id)
    weights, meta, run_config, metrics = _run_files(run)
    state = load_file(str(weights))
    check_finite(state, str(weights))
    config = hub_config(meta)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(state, out / "model.safetensors", metadata={"format": "pt"})
    atomic_write_json(out / "config.json", config)
    atomic_write_text(out / "README.md", model_card(config, meta, run_config, metrics, weights.name, repo_id))
    return out


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False) -> str:
    """Upload an exported folder to the Hub repository `repo_id` (created if missing) with huggingface_hub's
    `upload_folder`; the commit's URL. Needs huggingface_hub and a token (`huggingface-cli login` or HF_TOKEN)."""
    check_repo_id(repo_id)
    if not available("huggingface_hub"):
        raise ValueError("pushing to the Hub needs huggingface_hub, which is not installed: pip install "
                         "'convscope[hub]'")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message="convscope export-hub")
    return str(getattr(info, "commit_url", info))
