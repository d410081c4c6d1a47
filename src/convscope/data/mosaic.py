"""A segmentation task on real images: Fashion-MNIST mosaics, generated deterministically, and the images/ +
masks/ folder layout they are written in (and that any segmentation data set can use).

A mosaic is a black canvas on which 2 to 5 Fashion-MNIST items (Xiao et al., arXiv 1708.07747) are drawn one
after the other, each scaled (bilinear) by a factor drawn from `scale` and placed at a random position inside
the canvas. An item's pixels brighter than `FOREGROUND` are drawn over whatever lies below them and labelled with
its class + 1; every other pixel keeps the label below it, 0 (background) where nothing was drawn. Mosaic i of a
split depends only on (seed, split, i): the same arguments give the same arrays on any machine and with any
`count`. The splits draw their items from disjoint source images: "train" from images 0..49999 of the
Fashion-MNIST training file, "val" from images 50000..59999, "test" from the test file.

The folder layout: `images/NAME.png` (any Pillow-readable image) and `masks/NAME.png`, a single-channel PNG of
class indices (IGNORE_INDEX for pixels to leave out) of the image's size. `SegmentationFolder` checks every pair
before anything is read for training: an image without a mask, a mask without an image, a size mismatch or a label
out of range ends in one ValueError naming the file.
"""
from __future__ import annotations

import functools
import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image
from ..extras import require
from ..files import atomic_write_bytes, check_output_dir


def _pil():
    """PIL.Image, or one line naming the extra that installs Pillow (the core install has none)."""
    require("PIL", "segmentation mosaics and image folders")
    from PIL import Image

    return Image

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Class names of the mosaic task: background, then Fashion-MNIST's ten classes (label = Fashion-MNIST label + 1).
MOSAIC_CLASSES = ("background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")
#: An item's pixels brighter than this (0..255) are drawn and labelled; darker ones leave the canvas as it is.
FOREGROUND = 24
#: Label of pixels to leave out of losses and metrics.
IGNORE_INDEX = 255
#: Each split's source images: (idx file prefix, first index, end index).
SPLITS = {"train": ("train", 0, 50000), "val": ("train", 50000, 60000), "test": ("t10k", 0, 10000)}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _read_idx_uint8(path: Path) -> np.ndarray:
    """An unsigned-byte idx file (the MNIST format), gzip-compressed."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3]))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3])
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but the file holds {arr.size} values")
    return arr.reshape(shape)


@functools.lru_cache(maxsize=4)
def _source(root: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of one Fashion-MNIST idx file pair."""
    paths = [Path(root) / f"{prefix}-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3), ("labels", 1))]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{p}: Fashion-MNIST idx file not found (install Debian's dataset-fashion-mnist or "
                             f"pass root=the directory holding the .gz files)")
    return _read_idx_uint8(paths[0]), _read_idx_uint8(paths[1])


@dataclass
class Mosaics:
    """Generated mosaics: images and masks (N, H, W) uint8, and the source image indices of each mosaic's items
    (indices into the split's idx file, in drawing order)."""

    images: np.ndarray
    masks: np.ndarray
    sources: list[list[int]]


def _draw(canvas: np.ndarray, mask: np.ndarray, item: np.ndarray, label: int, rng: np.random.Generator,
          scale: tuple[float, float]) -> None:
    """Scale `item`, place it at a random position inside the canvas, draw its foreground over canvas and mask."""
    h, w = canvas.shape
    side = min(h, w, max(8, round(28 * rng.uniform(*scale))))
    pil = _pil()
    pixels = np.asarray(pil.fromarray(item).resize((side, side), pil.BILINEAR))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    fg = pixels > FOREGROUND
    canvas[y:y + side, x:x + side][fg] = pixels[fg]
    mask[y:y + side, x:x + side][fg] = label


def make_mosaics(split: str, count: int, *, size: tuple[int, int] = (96, 128), items: tuple[int, int] = (2, 5),
                 scale: tuple[float, float] = (0.75, 2.0), seed: int = 0,
                 root: str | os.PathLike = FASHION_MNIST_DIR) -> Mosaics:
    """`count` mosaics of `size` (height, width) for `split` ("train", "val" or "test"), each with items[0] to
    items[1] items scaled by a factor in `scale`; mosaic i depends only on (seed, split, i)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if count < 0 or min(size) < 8 or not 1 <= items[0] <= items[1] or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"need count >= 0, sides >= 8, 1 <= items[0] <= items[1] and 0 < scale[0] <= scale[1]; "
                         f"got count={count}, size={size}, items={items}, scale={scale}")
    prefix, start, end = SPLITS[split]
    pictures, labels = _source(str(root), prefix)
    images = np.zeros((count, *size), np.uint8)
    masks = np.zeros((count, *size), np.uint8)
    sources = []
    for i in range(count):
        rng = np.random.default_rng((seed, list(SPLITS).index(split), i))
        picked = [int(j) for j in rng.integers(start, end, size=int(rng.integers(items[0], items[1] + 1)))]
        for j in picked:
            _draw(images[i], masks[i], pictures[j], int(labels[j]) + 1, rng, scale)
        sources.append(picked)
    return Mosaics(images, masks, sources)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    _pil().fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_mosaics(out_dir: str | os.PathLike, split: str, count: int, **options) -> Path:
    """Generate `count` mosaics of `split` (`make_mosaics` options) and write them as out_dir/images/SPLIT_NNNNN.png
    and out_dir/masks/SPLIT_NNNNN.png (each file written atomically); returns out_dir."""
    out = check_output_dir(out_dir)
    mosaics = make_mosaics(split, count, **options)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(zip(mosaics.images, mosaics.masks, strict=True)):
        atomic_write_bytes(out / "images" / f"{split}_{i:05d}.png", _png(image))
        atomic_write_bytes(out / "masks" / f"{split}_{i:05d}.png", _png(mask))
    return out


def _open(path: Path) -> Image.Image:
    pil = _pil()
    try:
        image = pil.open(path)
        image.load()
    except (OSError, pil.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    return image


def _check_pair(image_path: Path, mask_path: Path, num_classes: int, ignore_index: int) -> None:
    """One ValueError naming the file when the mask does not fit the image or holds a label out of range."""
    mask = _open(mask_path)
    if mask.mode not in ("L", "P"):
        raise ValueError(f"{mask_path}: a mask must be a single-channel PNG of class indices; got mode {mask.mode}")
    with _pil().open(image_path) as image:
        if image.size != mask.size:
            raise ValueError(f"{mask_path}: mask is {mask.size[0]}x{mask.size[1]} (WxH) but its image "
                             f"{image_path.name} is {image.size[0]}x{image.size[1]}")
    values = np.unique(np.asarray(mask))
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise ValueError(f"{mask_path}: label {int(bad[0])} is outside 0..{num_classes - 1} "
                         f"(and the ignore index {ignore_index})")


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of the folder, matched by name; ValueError naming the first file without its partner."""
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise ValueError(f"{root / sub}: no such directory (a segmentation folder holds images/ and masks/)")
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    masks = {p.stem: p for p in (root / "masks").iterdir() if p.suffix.lower() == ".png"}
    if not images:
        raise ValueError(f"{root / 'images'}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    stems = {p.stem for p in images}
    for p in images:
        if p.stem not in masks:
            raise ValueError(f"{p}: image without a mask (expected {root / 'masks' / (p.stem + '.png')})")
    for stem, p in sorted(masks.items()):
        if stem not in stems:
            raise ValueError(f"{p}: mask without an image in {root / 'images'}")
    return [(p, masks[p.stem]) for p in images]


class SegmentationFolder:
    """Image/mask pairs of an images/ + masks/ folder, every pair checked on construction. Item i is
    (image (C, H, W) uint8, mask (H, W) int64), C = 1 for grayscale images and 3 otherwise."""

    def __init__(self, root: str | os.PathLike, num_classes: int = len(MOSAIC_CLASSES),
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.root = Path(root)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.pairs = _pairs(self.root)
        for image_path, mask_path in self.pairs:
            _check_pair(image_path, mask_path, num_classes, ignore_index)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[i]
        image = _open(image_path)
        image = image if image.mode == "L" else image.convert("RGB")
        pixels = torch.from_numpy(np.array(image))
        pixels = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        return pixels.contiguous(), torch.from_numpy(np.array(_open(mask_path))).long()
