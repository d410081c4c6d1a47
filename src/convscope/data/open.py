"""One data path: the one place where a data spec (`--data`) becomes a dataset for a split.

Specs: 'fashion-mnist' (Debian's idx files), 'synthetic', a directory of Fashion-MNIST (MNIST-format) idx files,
an image folder `root/<class>/<images>`, a folder with `train/` and `val/` (or `test/`) subfolders, each
`<split>/<class>/<images>`, or a directory of tar shards holding an `index.json` (`convscope data pack`,
`shards.py`), read as the folder it was packed from. `probe_data` reads what a spec holds without decoding an
image (classes, channels, native size, how many files); `open_dataset` opens one split, with the checks every
caller needs: Pillow for folders, the class names a model expects, and unreadable files found up front and
reported by path.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..extras import require
from .datasets import (
    FASHION_MNIST_CLASSES,
    ImageFolder,
    IndexSubset,
    fashion_mnist,
    is_idx_dir,
    print_warning,
    probe_images,
    repeat_channels,
    split_indices,
    synthetic,
)
from .shards import ShardImages, is_shard_dir, read_index

SPLITS = ("train", "val", "test")
HELD_OUT_DIRS = ("val", "test")


@dataclass(frozen=True)
class SyntheticOptions:
    """The 'synthetic' spec's size: `n` training images (a quarter as many, at least 2, held out) of `num_classes`
    classes at `image_size` x `image_size`."""

    n: int = 512
    num_classes: int = 4
    image_size: int = 32


@dataclass(frozen=True)
class DataFacts:
    """What a data spec holds, read without decoding an image."""

    kind: str                         # 'fashion-mnist', 'idx', 'synthetic', 'folder' or 'shards'
    spec: str
    classes: tuple[str, ...]
    native_size: tuple[int, int]      # a folder's: the median over a sample of its files' headers
    gray: bool                        # single-channel images
    n_images: int = 0                 # a folder's image files or shards' images (training and held-out)
    train_root: Path | None = None    # a folder's training images (the folder itself, or its train/)
    held_out_root: Path | None = None   # a folder's val/ or test/, when it has one

    @property
    def in_memory(self) -> bool:
        """Whether the images are held in memory at their native size (not decoded from files)."""
        return self.kind not in ("folder", "shards")


@dataclass
class OpenedData:
    """A data spec opened for one split: uint8 (C, H, W) images with labels, and what the callers report."""

    dataset: Any                      # TensorImageDataset, ImageFolder or IndexSubset (all have get_batch)
    held_out: Any                     # the held-out part when asked for (split 'train', held_out=...), else None
    classes: tuple[str, ...]
    in_chans: int
    facts: DataFacts
    description: str
    skipped: tuple[str, ...] = ()     # files found unreadable before any was decoded, by path


def _folder_facts(spec: str, path: Path) -> DataFacts:
    require("PIL", "reading an image folder")
    train_root = path / "train" if (path / "train").is_dir() else path
    held = next((path / d for d in HELD_OUT_DIRS if (path / d).is_dir()), None) if train_root != path else None
    quiet = ImageFolder(train_root, 1, check="none", report=lambda m: None)
    n = len(quiet)
    if held is not None:
        n += len(ImageFolder(held, 1, check="none", classes=quiet.classes, report=lambda m: None))
    nh, nw, gray = probe_images([p for p, _ in quiet.samples])
    return DataFacts("folder", spec, quiet.classes, (nh, nw), gray, n, train_root, held)


def probe_data(spec: str | os.PathLike, synthetic_options: SyntheticOptions | None = None) -> DataFacts:
    """The kind, classes, native size and channels of a data spec, from file headers at most."""
    spec = str(spec)
    path = Path(spec)
    if spec == "fashion-mnist" or (path.is_dir() and is_idx_dir(path)):
        return DataFacts("fashion-mnist" if spec == "fashion-mnist" else "idx", spec, FASHION_MNIST_CLASSES,
                         (28, 28), True)
    if spec == "synthetic":
        o = synthetic_options or SyntheticOptions()
        return DataFacts("synthetic", spec, tuple(f"class{i}" for i in range(o.num_classes)),
                         (o.image_size, o.image_size), False)
    if not path.is_dir():
        raise FileNotFoundError(f"--data {spec!r} is neither 'fashion-mnist', 'synthetic' nor a directory")
    if is_shard_dir(path):
        return _shard_facts(spec, path)
    return _folder_facts(spec, path)


def _shard_facts(spec: str, path: Path) -> DataFacts:
    """A shard set's facts, from its index (validated): its training split is 'all' or 'train', its held-out
    split 'val' or 'test' when it has one."""
    require("PIL", "reading image shards")
    index = read_index(path)
    splits = index["splits"]
    held = next((path / d for d in HELD_OUT_DIRS if d in splits), None)
    n = sum(len(e["samples"]) for e in splits.values())
    return DataFacts("shards", spec, tuple(index["classes"]), tuple(index["native_size"]), index["gray"], n,
                     path / ("train" if "train" in splits else "all"), held)


def _open_in_memory(facts: DataFacts, split: str, in_chans: int | None, held_out: float | None, seed: int,
                    synthetic_options: SyntheticOptions | None) -> tuple[Any, Any, int, str]:
    """(split's dataset, held-out dataset or None, channels, description) of Fashion-MNIST or synthetic data."""
    if facts.kind == "synthetic":
        o = synthetic_options or SyntheticOptions()
        kw = dict(num_classes=o.num_classes, size=o.image_size, in_chans=in_chans or 3, seed=seed)
        parts = {"train": lambda: synthetic(o.n, split="train", **kw),
                 "test": lambda: synthetic(max(o.n // 4, 2), split="test", **kw)}
        desc = f"synthetic ({o.n} images, {o.num_classes} classes)"
    else:
        root = None if facts.kind == "fashion-mnist" else Path(facts.spec)
        parts = {s: (lambda s=s: repeat_channels(fashion_mnist(root, s), in_chans or 1)) for s in ("train", "test")}
        desc = f"Fashion-MNIST ({root or 'default location'})"
    dataset = parts["train" if split == "train" else "test"]()
    held = parts["test"]() if split == "train" and held_out is not None else None
    return dataset, held, dataset.in_chans, desc


def _folder_split(facts: DataFacts, split: str) -> Path:
    """The directory holding a folder's `split`: its train/, its val/ or test/ (the one named if both exist),
    or the folder itself when it has no split subfolders. A shard set's splits are named as if they were
    subfolders: `DIR/train`, `DIR/val`, and `DIR/all` for the images of a folder without split subfolders."""
    whole = facts.train_root == Path(facts.spec) or facts.kind == "shards" and facts.train_root.name == "all"
    if split == "train" or whole:
        return facts.train_root
    if facts.held_out_root is None:
        raise ValueError(f"{facts.spec} has train/ but no val/ or test/ "
                         f"{'split' if facts.kind == 'shards' else 'subfolder'} to take the {split!r} split from")
    named = Path(facts.spec) / split
    return named if named.is_dir() else facts.held_out_root


def _images(facts: DataFacts, split_root: Path, **kw: Any) -> ImageFolder:
    """The images of one split: a folder's directory, or a shard set's split (`DIR/<split name>`)."""
    if facts.kind == "shards":
        return ShardImages(split_root.parent, split_root.name, **kw)
    return ImageFolder(split_root, **kw)


def _open_folder(facts: DataFacts, split: str, in_chans: int | None, held_out: float | None, seed: int,
                 classes: Sequence[str] | None, **kw: Any) -> tuple[Any, Any, int, str, tuple[str, ...]]:
    """(split's dataset, held-out dataset or None, channels, description, unreadable files) of an image folder."""
    in_chans = in_chans or (1 if facts.gray else 3)
    kw.update(mode="RGB" if in_chans == 3 else "L", classes=classes)
    full = _images(facts, _folder_split(facts, split), **kw)
    dataset, held = full, None
    if split == "train" and held_out is not None:
        if facts.held_out_root is not None:
            held = _images(facts, facts.held_out_root, **dict(kw, classes=full.classes))
        else:
            tr, va = split_indices(len(full), held_out, seed)
            dataset, held = IndexSubset(full, tr), IndexSubset(full, va)
    folders = [full, held] if isinstance(held, ImageFolder) else [full]   # ShardImages are ImageFolders
    skipped = tuple(p for folder in folders for p, _ in folder.skipped)
    nh, nw = facts.native_size
    counts = f"{len(dataset)} train / {len(held)} eval images" if held is not None else f"{len(dataset)} images"
    what = "image shards" if facts.kind == "shards" else "image folder"
    desc = (f"{what} {facts.spec} ({counts}, {nh}x{nw} {'grayscale' if facts.gray else 'colour'}"
            f"{', decoded once and held in memory' if kw.get('cache') else ''})")
    return dataset, held, in_chans, desc, skipped


def open_dataset(spec: str | os.PathLike, split: str = "train", *, in_chans: int | None = None,
                 load_size: int | None = None, classes: Sequence[str] | None = None, held_out: float | None = None,
                 seed: int = 0, on_error: str = "skip", check: str = "auto", cache: bool = False,
                 report: Callable[[str], None] | None = None, synthetic_options: SyntheticOptions | None = None,
                 facts: DataFacts | None = None) -> OpenedData:
    """`spec` opened for `split` ('train', 'val' or 'test'; Fashion-MNIST's and synthetic data's 'val' is their
    test set, a folder without split subfolders is one split whole).

    in_chans: channels to feed (grayscale repeated; a folder's colour images converted); default the data's own.
    load_size: the square side a folder's images are decoded to (required for folders).
    classes: the class names a model expects: the data must hold them (ValueError naming both lists otherwise).
    held_out: with split 'train', also open the held-out part: the spec's own (Fashion-MNIST's and synthetic
        data's test set, a folder's val/ or test/), else this fraction of the folder (seeded by `seed`).
    on_error, check, cache, report: a folder's handling of unreadable files and its decode cache (`ImageFolder`);
        unreadable files found up front are also returned by path in `skipped`.
    facts: `probe_data(spec)` when the caller already has it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    facts = facts or probe_data(spec, synthetic_options)
    skipped: tuple[str, ...] = ()
    if facts.in_memory:
        dataset, held, in_chans, desc = _open_in_memory(facts, split, in_chans, held_out, seed, synthetic_options)
    else:
        if load_size is None or load_size < 1:
            raise ValueError(f"reading the images of {facts.spec} needs a load size >= 1; got {load_size}")
        dataset, held, in_chans, desc, skipped = _open_folder(
            facts, split, in_chans, held_out, seed, classes, load_size=load_size, on_error=on_error, check=check,
            cache=cache, report=report or print_warning)
    data_classes = tuple(dataset.classes)
    if classes is not None and data_classes != tuple(classes):
        raise ValueError(f"the data's classes {list(data_classes)} differ from the model's {list(classes)}")
    return OpenedData(dataset, held, data_classes, in_chans, facts, desc, skipped)
