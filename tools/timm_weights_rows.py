"""Print the timm rows of src/convscope/hub/registry.py (`_TIMM_RELEASES`) from a timm checkout, so that the
transcription can be checked and redone at another timm commit.

    git clone https://github.com/huggingface/pytorch-image-models /path/to/timm
    python tools/timm_weights_rows.py /path/to/timm > rows.txt   # then paste over _TIMM_RELEASES and update _timm()

For every registered variant timm carries, each pretrained tag with a Hugging Face Hub copy becomes one row: the
variant (a variant sharing timm's name with another, e.g. inception_next_base_384, takes the tags at its resolution),
the tag, `timm/<tag>`, the data chain the tag spells, the resolution, timm's top-1 from results/results-imagenet.csv,
the licence and the classifier size of the pretrained cfg. Needs timm's dependencies (torchvision); on a CPU-only
torch whose torchvision is a CUDA build, the two operators torchvision registers are declared first.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

import convscope

_LICENCES = {"apache-2.0": "APACHE", "cc-by-nc-4.0": "CC_BY_NC"}
_DECLARED: list[torch.library.Library] = []
_DATA = (("clip_laion2b", "LAION-2B (CLIP)"), ("clip_laiona", "LAION-Aesthetic (CLIP)"), ("lvd1689m", "LVD-1689M"),
         ("fcmae", "FCMAE"), ("in22k", "ImageNet-22k"), ("in21k", "ImageNet-21k"), ("in12k", "ImageNet-12k"))


def dataset(tag: str) -> str:
    """The data chain a timm tag spells, pretraining first ('in22k_ft_in1k' -> 'ImageNet-22k -> ImageNet-1k')."""
    t = tag.split(".", 1)[1]
    parts = [(t.index(key), name) for key, name in _DATA if key in t]
    if t.endswith(("in1k", "in1k_384", "in1k_512")) or "_in1k_" in t or "ft_in1k" in t:
        parts.append((t.rindex("in1k"), "ImageNet-1k"))
    chain = [name for _, name in sorted(parts)]
    if chain == ["FCMAE"]:
        return "ImageNet-1k (FCMAE, no labels)"
    if chain[:1] == ["FCMAE"]:
        chain[0] = "ImageNet-1k (FCMAE)" if chain[1:] == ["ImageNet-1k"] else "FCMAE"
    return " -> ".join(chain) or "ImageNet-1k"


def _import_timm(checkout: Path):
    """timm from `checkout`, with torchvision's two operators declared when its build does not match torch."""
    sys.path.insert(0, str(checkout))
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _DECLARED.append(lib)   # the declarations last as long as the library object
    from timm.models import _registry
    return _registry


def _row(model: str, tag: str, cfg, top1: float | None, module: str) -> str:
    licence = _LICENCES.get(cfg.license, f'"{cfg.license}"')
    return (f'    Release("{model}", "{tag}",\n'
            f'            HUB, "{cfg.hf_hub_id}", SAFETENSORS, None,\n'
            f'            "{dataset(tag)}", {cfg.input_size[-1]}, {top1!r}, {licence}, TIMM, {cfg.num_classes}, '
            f'_timm("{module}", {top1 is not None})),')


def rows(checkout: Path) -> list[str]:
    """The registry rows for every Hub-hosted timm tag of the registered variants timm carries."""
    registry = _import_timm(checkout)
    with open(checkout / "results" / "results-imagenet.csv", encoding="utf-8") as f:
        top1 = {row["model"]: float(row["top1"]) for row in csv.DictReader(f)}
    ours: dict[str, list[str]] = {}
    for name in convscope.list_models():
        timm_name = convscope.model_card(name).timm_name
        if timm_name:
            ours.setdefault(timm_name, []).append(name)
    out = []
    for timm_name in sorted(ours):
        module = registry._model_to_module[timm_name].split(".")[-1]
        for tag, cfg in registry.get_arch_pretrained_cfgs(timm_name).items():
            if not cfg.hf_hub_id:
                continue
            targets = ours[timm_name]
            if len(targets) > 1:
                targets = [m for m in targets if convscope.model_card(m).input_size[-1] == cfg.input_size[-1]]
            out.extend(_row(m, tag, cfg, top1.get(tag), module) for m in targets)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a pytorch-image-models checkout (with results/)")
    args = parser.parse_args(argv)
    if not (args.checkout / "timm" / "models").is_dir():
        print(f"{args.checkout} is not a pytorch-image-models checkout (no timm/models)", file=sys.stderr)
        return 2
    print("\n".join(rows(args.checkout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
