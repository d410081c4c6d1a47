"""`convscope explain`, `erf` and `probe`: what a model sees (convscope.explain) from the command line.

A model is a run, a weights file written by `convscope train`, a pruned model file, or a registered name (random
weights, or `--checkpoint`'s), resolved as `eval` and `predict` resolve theirs; images are read and normalised by
the model's own description, as `predict` reads them. Each command checks its extras, its inputs and that it
would overwrite nothing (unless --force) before any work, and writes every file atomically.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..extras import require
from . import options, values

EXPLAIN_METHODS = ("gradcam", "gradcam++", "scorecam", "layercam", "lrp", "occlusion")
PROBE_METHODS = {"logreg": "logistic", "knn": "knn"}   # the command's names -> convscope.explain.PROBES


# -- shared: the model, the outputs, the images ------------------------------------------------------------------
def open_model(source: str, checkpoint: str | None) -> tuple[nn.Module, dict]:
    """(eval-mode model, its description) of RUN|MODEL, or of a model name with `checkpoint`'s weights (a file
    written by `convscope train` for that model, or its run directory)."""
    from ..models.source import check_model_name, load_source, source_meta

    if checkpoint is None:
        meta = source_meta(source)
        return load_source(source)[0], meta
    if Path(source).exists():
        raise ValueError(f"{source} is a run or weights file already; --checkpoint goes with a model name")
    name = check_model_name(source, "model")
    meta = source_meta(checkpoint)
    if meta["model"] != name:
        raise ValueError(f"--checkpoint {checkpoint} holds a {meta['model']}, not a {name}")
    return load_source(checkpoint)[0], meta


def fresh_outputs(paths: Sequence[Path], force: bool) -> None:
    """ValueError naming the first of `paths` that exists, unless `force`."""
    for p in paths:
        if p.exists() and not force:
            raise ValueError(f"{p} exists; pass --force to replace it, or choose another --out")


def image_paths(items: Sequence[str]) -> list[Path]:
    """The image files named: files as given, folders as the image files under them (sorted); ValueError for a
    path that does not exist, a folder without images, or two images of one file name."""
    from ..data.datasets import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f"{p} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"no image file or folder at {item}")
    stems = [p.stem for p in paths]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ValueError(f"several images are named {twice[0]!r}; their overlays would share a file name")
    return paths


def model_inputs(images: torch.Tensor, meta: dict, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The float batch the model takes for uint8 `images` (N, C, h, w): `predict`'s transform of its
    description (central crop_pct, resized to its input size or `size`, normalised)."""
    from ..data.transforms import EvalTransform

    return EvalTransform(size or meta["input_size"], meta["mean"], meta["std"], meta["crop_pct"])(images)


def read_images(paths: Sequence[Path], meta: dict) -> torch.Tensor:
    """The model input batch of image files, decoded and normalised as `predict` does; ValueError naming a file
    that cannot be read."""
    from ..data.datasets import load_image

    mode = "RGB" if meta["in_chans"] == 3 else "L"
    raw = []
    for p in paths:
        try:
            raw.append(load_image(p, mode, meta["load_size"][0]))
        except Exception as e:  # noqa: BLE001 - Pillow's many error types
            raise ValueError(f"cannot read image {p}: {type(e).__name__}: {e}") from None
    return model_inputs(torch.stack(raw), meta)


def as_seen(x: torch.Tensor, meta: dict) -> torch.Tensor:
    """uint8 (N, C, H, W): the model input `x` with its normalisation undone (what the model saw)."""
    mean = torch.tensor(meta["mean"], dtype=x.dtype)[:, None, None]
    std = torch.tensor(meta["std"], dtype=x.dtype)[:, None, None]
    return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def _layer(text: str | None) -> int | str | None:
    """A --layer value: a feature_info index (an integer) or a module name."""
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def class_index(target: str | None, classes: Sequence[str]) -> int | None:
    """The class a --target names (an index or a class name); ValueError listing the classes otherwise."""
    if target is None:
        return None
    if target in classes:
        return list(classes).index(target)
    if target.isdigit() and int(target) < len(classes):
        return int(target)
    shown = ", ".join(classes[:12]) + (" ..." if len(classes) > 12 else "")
    raise ValueError(f"--target must be a class index 0..{len(classes) - 1} or a class name ({shown}); "
                     f"got {target!r}")


# -- explain -----------------------------------------------------------------------------------------------------
def heat_maps(model: nn.Module, x: torch.Tensor, method: str, targets: torch.Tensor,
              layer: int | str | None) -> torch.Tensor:
    """(N, H, W) in [0, 1]: `method`'s explanation of each image's target class at the input's size. CAMs as
    computed; LRP's input relevance summed over channels and occlusion's attribution (patches of 1/8 of the
    shorter side), each positive part scaled to a maximum of 1."""
    from ..explain import METHODS, class_activation_map, lrp, occlusion
    from ..explain.page import unit_heat

    if method in METHODS:
        return class_activation_map(model, x, method, targets, layer).maps.double()
    if method == "lrp":
        raw = lrp(model, x, targets).input.sum(1)
    else:
        raw = occlusion(model, x, targets, patch=max(1, min(x.shape[-2:]) // 8))
    return torch.stack([unit_heat(h) for h in raw])


def _explain_plan(args: argparse.Namespace) -> tuple[list[Path], nn.Module, dict, list[Path]]:
    """The checks of `convscope explain`, before any work: (images, model, description, output files)."""
    from ..explain import METHODS, resolve_layer

    require("PIL", "convscope explain (reading images, writing PNGs)")
    paths = image_paths(args.images)
    model, meta = open_model(args.source, args.checkpoint)
    cams = [m for m in args.method if m in METHODS]
    if args.layer is not None and not cams:
        raise ValueError(f"--layer applies to {', '.join(METHODS)}; got only {', '.join(args.method)}")
    if cams:
        resolve_layer(model, _layer(args.layer), tuple(meta["input_size"]))
    outputs = [args.out / f"{p.stem}.{m}.png" for p in paths for m in args.method] + [args.out / "explain.html"]
    values.check_distinct({"--out": outputs}, {f"image {p}": p for p in paths} | {"--checkpoint": args.checkpoint})
    fresh_outputs(outputs, args.force)
    return paths, model, meta, outputs


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..explain.page import ExplainedImage, display_factor, enlarge, html_page, overlay, png_bytes
    from ..files import atomic_write_bytes, atomic_write_text

    paths, model, meta, outputs = _explain_plan(args)
    classes = meta["class_names"]
    target = class_index(args.target, classes)
    x = read_images(paths, meta)
    with torch.no_grad():
        probs = model(x).float().softmax(-1)
    targets = probs.argmax(1) if target is None else torch.full((len(paths),), target)
    heats = {m: heat_maps(model, x, m, targets, _layer(args.layer)) for m in args.method}
    seen = as_seen(x, meta)
    k = display_factor(x.shape[-2:])
    items = []
    for i, p in enumerate(paths):
        top = probs[i].topk(min(3, len(classes)))
        pngs = [(m, classes[targets[i]], png_bytes(enlarge(overlay(seen[i], heats[m][i]), k))) for m in args.method]
        for m, _, png in pngs:
            print(f"wrote {atomic_write_bytes(args.out / f'{p.stem}.{m}.png', png)}")
        items.append(ExplainedImage(p.name, png_bytes(enlarge(seen[i], k)),
                                    [(classes[j], float(v)) for v, j in zip(top.values, top.indices, strict=True)],
                                    pngs))
    lines = [f"model: {meta['model']} ({args.checkpoint or args.source}); input {x.shape[-2]}x{x.shape[-1]}",
             f"methods: {', '.join(args.method)}; explained class: "
             f"{'each image’s top class' if target is None else classes[target]}"]
    page = html_page("convscope explain", lines, items)
    print(f"wrote {atomic_write_text(outputs[-1], page)}")
    return 0


# -- erf ---------------------------------------------------------------------------------------------------------
def data_images(spec: str, meta: dict, split: str, limit: int, size: tuple[int, int] | None,
                held_out: float | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(model inputs, labels)] of the first `limit` images of `split` of the data `spec` (and of its held-out
    part with `held_out`), decoded for the model's channels and normalised by its description."""
    from ..data.open import open_dataset

    load = meta["load_size"][0] if size is None else round(max(size) / meta["crop_pct"])
    opened = open_dataset(spec, split, in_chans=meta["in_chans"], load_size=load, held_out=held_out)
    out = []
    for ds in (opened.dataset, opened.held_out):
        if ds is None:
            continue
        images, labels, _ = ds.get_batch(range(min(limit, len(ds))))
        if not len(images):
            raise ValueError(f"none of the first {limit} images of {spec} ({split}) could be read")
        out.append((model_inputs(images, meta, size), labels))
    return out


def erf_markdown(model: str, ratios: dict[float, float], lines: Sequence[str]) -> str:
    """The area-ratio table of one ERF as a markdown page."""
    from ..utils import markdown_table

    table = markdown_table(("threshold t", "area ratio"), [[f"{t:g}", f"{r:.4f}"] for t, r in ratios.items()])
    return f"# Effective receptive field: {model}\n\n" + "".join(f"{line}\n" for line in lines) + f"\n{table}\n"


def _cmd_erf(args: argparse.Namespace) -> int:
    from ..data.open import probe_data
    from ..explain import effective_receptive_field
    from ..explain.page import save_erf_figure
    from ..files import atomic_write_json, atomic_write_text

    require("matplotlib", "convscope erf (the heatmap)")
    probe_data(args.data)   # a folder needs Pillow: said here, before the model is built
    model, meta = open_model(args.model, args.checkpoint)
    outputs = [args.out / f"erf.{ext}" for ext in ("png", "md", "json")]
    values.check_distinct({"--out": outputs}, {"--data": args.data, "--checkpoint": args.checkpoint})
    fresh_outputs(outputs, args.force)
    [(x, _)] = data_images(args.data, meta, "test", args.images, args.size)
    erf = effective_receptive_field(model, x)
    size = f"{x.shape[-2]}x{x.shape[-1]}"
    with torch.no_grad():
        (fmap,) = model.forward_intermediates(x[:1], indices=[erf.layer], intermediates_only=True)
    h, w = fmap.shape[-2:]
    lines = [f"Model {meta['model']} ({args.checkpoint or args.model}), last stage (feature_info {erf.layer}): "
             f"position ({h // 2}, {w // 2}) of its {h}x{w} map; {erf.images} images of {args.data} at {size}. "
             "Area ratio: the smallest centred square holding more than t of the log-scaled contribution, as a "
             "fraction of the input (RepLKNet's measure)."]
    save_erf_figure([(f"{meta['model']} ({size}, {erf.images} images)", erf.map)], outputs[0])
    atomic_write_text(outputs[1], erf_markdown(meta["model"], erf.area_ratio, lines))
    atomic_write_json(outputs[2], dict(model=meta["model"], source=args.checkpoint or args.model, data=args.data,
                                       images=erf.images, size=list(x.shape[-2:]), layer=erf.layer,
                                       area_ratio={f"{t:g}": r for t, r in erf.area_ratio.items()}))
    print(erf_markdown(meta["model"], erf.area_ratio, lines))
    print("\n".join(f"wrote {p}" for p in outputs))
    return 0


# -- probe -------------------------------------------------------------------------------------------------------
def _probe_layer(text: str) -> int | str:
    return text if text == "pre_logits" else values.int_range(-64, 64)(text)


def _cmd_probe(args: argparse.Namespace) -> int:
    from ..data.open import probe_data
    from ..explain import extract_features, linear_probe
    from ..files import atomic_write_json

    probe_data(args.data)
    model, meta = open_model(args.source, args.checkpoint)
    n = len(model.feature_info)
    if args.layer != "pre_logits" and not -n <= args.layer < n:
        raise ValueError(f"--layer must be a feature_info index in {-n}..{n - 1} or pre_logits; got {args.layer}")
    out = args.out / "probe.json"
    values.check_distinct({"--out": [out]}, {"--data": args.data, "--checkpoint": args.checkpoint})
    fresh_outputs([out], args.force)
    (train_x, train_y), (test_x, test_y) = data_images(args.data, meta, "train", args.limit, args.size, 0.2)
    train_f = extract_features(model, train_x, args.layer)
    test_f = extract_features(model, test_x, args.layer)
    result = linear_probe(train_f, train_y, test_f, test_y, PROBE_METHODS[args.method])
    record = dict(model=meta["model"], source=args.checkpoint or args.source, data=args.data, layer=args.layer,
                  method=args.method, features=train_f.shape[1], train_images=len(train_y),
                  test_images=len(test_y), accuracy=result.accuracy)
    atomic_write_json(out, record)
    print(f"{meta['model']} layer {args.layer}, {args.method} probe on {args.data}: accuracy "
          f"{100 * result.accuracy:.2f}% ({len(test_y)} test images, {len(train_y)} training images, "
          f"{train_f.shape[1]} features)")
    print(f"wrote {out}")
    return 0


# -- the commands ------------------------------------------------------------------------------------------------
def _outputs(sp: argparse.ArgumentParser, default: str) -> None:
    sp.add_argument("--out", type=values.output_dir, default=default, help=f"output directory (default: {default})")
    sp.add_argument("--force", action="store_true", help="replace output files that exist")


def _checkpoint(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--checkpoint", default=None, metavar="FILE|RUN", help="the model's weights: a file written by "
                    "convscope train for it, or its run directory (default: random weights)")


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """explain, erf, probe."""
    sp = add("explain", _cmd_explain, "explain a model's predictions on image files: overlay PNGs (CAMs, LRP, "
             "occlusion) and one self-contained HTML page")
    sp.add_argument("source", metavar="RUN|MODEL", help="a run directory, a weights file or a registered model name")
    sp.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
    sp.add_argument("--method", type=values.comma_list(EXPLAIN_METHODS), default=("gradcam",),
                    help=f"comma-separated, of {','.join(EXPLAIN_METHODS)} (default: gradcam)")
    sp.add_argument("--layer", default=None, help="CAM layer: a feature_info index or a module name (default: the "
                    "family's)")
    sp.add_argument("--target", default=None, metavar="CLASS", help="class index or name to explain (default: each "
                    "image's top class)")
    _checkpoint(sp)
    _outputs(sp, "explain")

    sp = add("erf", _cmd_erf, "effective receptive field of a model's last stage (RepLKNet's): heatmap PNG and "
             "area ratios at t = 0.2, 0.3, 0.5, 0.99 (markdown and JSON)")
    sp.add_argument("model", metavar="MODEL|RUN")
    _checkpoint(sp)
    sp.add_argument("--data", type=values.data_source, required=True, help="fashion-mnist, an idx directory or an "
                    "image folder (its test/val split when it has one)")
    sp.add_argument("--images", type=values.int_range(1, 10_000), default=16, help="images averaged (default: 16)")
    options.add_size(sp, "the model's input size")
    _outputs(sp, "erf")

    sp = add("probe", _cmd_probe, "linear probe of a model's features: logistic regression or k-NN on any "
             "feature_info layer, accuracy printed and written to probe.json")
    sp.add_argument("source", metavar="MODEL|RUN")
    _checkpoint(sp)
    sp.add_argument("--data", type=values.data_source, required=True, help="fashion-mnist, an idx directory or an "
                    "image folder (its val/test split, else a seeded fifth of it, is the test set)")
    sp.add_argument("--layer", type=_probe_layer, default=-1, help="feature_info index or pre_logits (default: -1)")
    sp.add_argument("--method", choices=tuple(PROBE_METHODS), default="logreg")
    sp.add_argument("--limit", type=values.int_range(1, 100_000), default=1000, metavar="K",
                    help="at most K training and K test images (default: 1000)")
    options.add_size(sp, "the model's input size")
    _outputs(sp, "probe")
