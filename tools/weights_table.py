"""Write docs/weights.md from the weights registry (`convscope.models.pretrained.registry`).

    python tools/weights_table.py            # rewrite docs/weights.md
    python tools/weights_table.py --check    # exit 1 when docs/weights.md is not what the registry gives

tests/hub/test_weights_page.py checks the page is current.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convscope.files import atomic_write_text
from convscope.models.pretrained.registry import RELEASES, WITHOUT_WEIGHTS
from convscope.utils.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "weights.md"
HEADERS = ("model", "tag", "source", "file", "data", "res", "top-1", "licence", "keys", "read from")

INTRO = """# Trained weights

Every public release of trained weights for the registered variants, generated from
`convscope.models.pretrained.registry` by `python tools/weights_table.py` (do not edit by hand). A variant's first
row is its default (`pretrained=True`).

- **source**: `hf-hub` (a Hugging Face Hub repository: needs `pip install 'convscope[hub]'`), `url` (downloaded
  into `TORCH_HOME/hub/checkpoints`, checked against the SHA-256 where the publisher gives one), `manual` (Google
  Drive, Baidu or OneDrive links a program cannot follow: download it by hand, then
  `convscope.models.pretrained.import_file(path, tag)` verifies it against the variant and caches it).
- **top-1**: ImageNet-1k top-1 as its publisher reports it for these weights (timm's rows: timm's own evaluation
  at the tag's resolution); `-` where none is reported (e.g. no 1k classifier).
- **keys**: the state-dict convention, mapped to convscope's by the family's converter when it is not timm's.
- Offline (`convscope.models.pretrained.set_offline(True)`, `CONVSCOPE_OFFLINE=1` or `HF_HUB_OFFLINE=1`) only
  cached files load.

```python
import convscope
from convscope.models import pretrained as hub

model = convscope.create_model("convnext_tiny", num_classes=10, in_chans=1)
report = hub.load_pretrained(model, "convnext_tiny", True, num_classes=10, in_chans=1)  # or a tag, 'hf-hub:org/repo',
print(report.notes)      # a URL or a path; the classifier is re-initialised, the stem summed to one channel
hub.list_pretrained("convnext_tiny*")                                # the tags
hub.import_file("RepLKNet-31B_ImageNet-1K_224.pth", "replknet_31b.official_in1k")   # a file downloaded by hand
```

## From the command line

```bash
convscope weights list [--model convnext_atto] [--json]     # the releases, and which are cached
convscope weights download convnext_atto[.d2_in1k]          # into the cache create_model(pretrained=...) reads
convscope weights import RepLKNet-31B_ImageNet-1K_224.pth --model replknet_31b.official_in1k
convscope weights verify replknet_31b.official_in1k         # or FILE --model NAME[.TAG]: SHA-256, keys, finite
convscope eval --model convnext_atto --checkpoint timm_or_official.pth --data val_folder/
convscope train --model convnext_atto --pretrained convnext_atto.d2_in1k --layer-decay 0.8 --head-lr-scale 10 ...
convscope export-hub runs/train --out hub_folder [--push org/name]
```

- `import` checks the file against the publisher's SHA-256 (when given), its keys and shapes through the family's
  converter and its values (all finite), then caches it atomically as `TORCH_HOME/hub/checkpoints/<tag>.safetensors`.
- `eval --model NAME` reads a checkpoint in timm's, the official repository's or Hugging Face transformers' keys
  (told apart by the family's converters) and preprocesses the data as the variant's card says; the folder's classes,
  sorted, must be the checkpoint's outputs; `--model-kwargs` sets constructor options the checkpoint's code differs
  in (transformers' CvT: `'{"mlp_act": "gelu"}'`).
- `train --pretrained` takes NAME[.TAG], `hf-hub:org/repo`, a URL or a file: the classifier is re-initialised for the
  data's classes, the stem adapted to its channels. `--layer-decay d` trains layer i of n (the model's
  `group_matcher()`, as timm's `param_groups_layer_decay`) at lr x d^(n - 1 - i); `--head-lr-scale` multiplies the
  head's. `--pretrained` and `--init-from` exclude each other.
- `export-hub` writes config.json (architecture, num_classes, in_chans, model_args, label_names, pretrained_cfg),
  model.safetensors and a README.md model card (data, recipe, metrics read from the run);
  `create_model(name, pretrained="hub_folder" or "hf-hub:org/name", num_classes=..., **model_args)` loads it.
  `--push` uploads it with huggingface_hub's `upload_folder` (a token is needed).
- `hubconf.py` at the repository's root gives torch.hub one entry per variant:
  `torch.hub.load("<owner>/convscope", "convnext_atto", pretrained=True)`.
"""


def _file(r) -> str:
    where = f"`{r.location}`" if r.source == "hf-hub" else f"[link]({r.location})"
    name = f" `{r.filename}`" if r.filename and r.filename != "model.safetensors" else ""
    return where + name


def render() -> str:
    """The whole page."""
    rows = [(r.model, f"`{r.tag}`", r.source, _file(r), r.dataset, r.resolution,
             "-" if r.top1 is None else f"{r.top1:g}", r.licence, r.keys, r.ref) for r in RELEASES]
    without = [(name, why) for name, why in sorted(WITHOUT_WEIGHTS.items())]
    return "\n".join([
        INTRO,
        f"{len(RELEASES)} releases for {len({r.model for r in RELEASES})} variants.\n",
        markdown_table(HEADERS, rows),
        f"\n## Variants without weights ({len(without)})\n",
        markdown_table(("model", "why"), without),
        ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/weights.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.is_file() else ""
        if current != text:
            print(f"{OUT} is out of date: run python tools/weights_table.py", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(OUT, text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
