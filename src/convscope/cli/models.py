"""`convscope list` and `convscope info`: the registry's models with their official figures, one model's card;
and the README's model table (`markdown_model_table`)."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

import torch

from ..models import create_model, list_models, model_card
from ..utils import markdown_table, text_table

MODEL_TABLE_HEADERS = ("model", "family", "params (M)", "MACs (G)", "input", "top-1", "arXiv")


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def model_table_rows(names: Sequence[str]) -> list[list[str]]:
    """One row per model of the official figures under MODEL_TABLE_HEADERS."""
    rows = []
    for n in names:
        c = model_card(n)
        rows.append([n, c.family, _fmt(c.params_m), _fmt(c.macs_g), f"{c.input_size[1]}x{c.input_size[2]}",
                     _fmt(c.top1, ".1f"), c.arxiv])
    return rows


def markdown_model_table(names: Sequence[str] | None = None) -> str:
    """The README's model table: the official figures of every registered variant."""
    rows = model_table_rows(list_models() if names is None else names)
    for r in rows:
        r[0] = f"`{r[0]}`"
        r[-1] = f"[{r[-1]}](https://arxiv.org/abs/{r[-1]})"
    return markdown_table(MODEL_TABLE_HEADERS, rows)


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern, family=args.family)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
    if args.format == "markdown":
        print(markdown_model_table(names))
    elif args.format == "json":
        print(json.dumps([model_card(n).to_dict() for n in names], indent=1))
    else:
        print(text_table(MODEL_TABLE_HEADERS, model_table_rows(names), "llrrlrl"))
        print(f"\n{len(names)} models; params, MACs (1 multiply-add = 1) and top-1 are the official figures.")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    card = model_card(args.name)
    with torch.device("meta"):
        model = create_model(card.name)
    counted = sum(p.numel() for p in model.parameters())
    info = card.to_dict() | dict(
        counted_params_m=round(counted / 1e6, 4),
        num_features=model.num_features,
        feature_info=[dict(channels=f["num_chs"], reduction=f["reduction"], module=f["module"])
                      for f in model.feature_info],
    )
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if k == "feature_info":
            v = ", ".join(f"{f['channels']}@/{f['reduction']}" for f in v)
        print(f"{k.ljust(width)}  {v}")
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """list, info."""
    sp = add("list", _cmd_list, "list registered models with their official params, MACs and input size")
    sp.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'convnext*'")
    sp.add_argument("--family", default=None)
    sp.add_argument("--format", choices=("table", "markdown", "json"), default="table")

    sp = add("info", _cmd_info, "show a model's card, counted parameters and feature maps")
    sp.add_argument("name")
    sp.add_argument("--json", action="store_true")
