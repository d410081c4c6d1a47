"""The datasets: uint8 images `(C, H, W)` of one size with integer labels, gathered a batch at a time.

- `fashion_mnist()`: Fashion-MNIST (Xiao et al., arXiv 1708.07747) read from its idx files (the `.gz` files
  of Debian's dataset-fashion-mnist package by default), held in memory as one uint8 tensor.
- `ImageFolder`: `root/<class>/<image>` directories decoded with PIL (EXIF orientation applied) and resized to a
  square `load_size`; unreadable files are reported by path and skipped, or raise, as the caller chooses. With
  `cache=True` each image is decoded once and kept in memory as uint8 (for folders small enough to hold:
  `cache_fits`).
- `synthetic()`: a small learnable in-memory dataset for tests.

`fetch_batch` gathers a batch of indices: one indexing operation for in-memory data, file by file for folders.
"""
from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import center_crop, resize_shorter

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# -- in-memory datasets ------------------------------------------------------------------------------------------
@dataclass
class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W) with int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = "tensor"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W); got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},); got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx], ()

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation of the pixels, scaled to [0, 1]."""
        c = self.in_chans
        s = torch.zeros(c, dtype=torch.float64)
        s2 = torch.zeros(c, dtype=torch.float64)
        for chunk in self.images.split(8192):
            x = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
            s += x.sum(1)
            s2 += (x * x).sum(1)
        n = self.images.numel() // c
        mean = s / n
        std = (s2 / n - mean * mean).clamp_min(0).sqrt()
        return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())

    def subset(self, n: int) -> TensorImageDataset:
        """The first n items (a view)."""
        return TensorImageDataset(self.images[:n], self.labels[:n], self.classes, self.name)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An idx file (the MNIST format: magic, dims, big-endian sizes, raw data), gzip-compressed or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown idx data type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} values) but the file holds "
                         f"{arr.size}")
    return arr.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no {stem}[.gz] in {root} (Fashion-MNIST idx files: install Debian's "
                            "dataset-fashion-mnist with `make data`, or pass the directory holding them)")


def fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> TensorImageDataset:
    """Fashion-MNIST: 60,000 train or 10,000 test 28x28 grayscale images of 10 classes, as (N, 1, 28, 28)."""
    if split not in ("train", "test"):
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test'; got {split!r}")
    root = Path(root or FASHION_MNIST_DIR)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST directory {root} does not exist (install Debian's "
                                "dataset-fashion-mnist with `make data`, or pass the directory holding the idx files)")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    return TensorImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                              torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES, "fashion-mnist")


def is_idx_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding Fashion-MNIST (MNIST-format) idx files."""
    path = Path(path)
    return path.is_dir() and any((path / f"train-images-idx3-ubyte{ext}").is_file() for ext in (".gz", ""))


def repeat_channels(ds: TensorImageDataset, in_chans: int) -> TensorImageDataset:
    """A grayscale dataset seen with `in_chans` identical channels (a view, no copy)."""
    if in_chans == ds.in_chans:
        return ds
    if ds.in_chans != 1:
        raise ValueError(f"{ds.name} has {ds.in_chans} channels; cannot feed a model with in_chans={in_chans}")
    return TensorImageDataset(ds.images.expand(-1, in_chans, -1, -1), ds.labels, ds.classes, ds.name)


def synthetic(n: int = 512, num_classes: int = 4, size: int = 32, in_chans: int = 3, seed: int = 0,
              split: str = "train", noise: float = 0.6) -> TensorImageDataset:
    """A learnable toy dataset: each class is a fixed smooth random pattern (drawn from `seed`), each image that
    pattern plus noise (drawn from `seed` and `split`, so train and test share patterns, not images)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(num_classes, in_chans, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(patterns, size=(size, size), mode="bilinear", align_corners=False)
    g.manual_seed(seed + (1 if split == "train" else 2) * 1_000_003)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    x = patterns[labels] * 1.5 + noise * torch.randn(n, in_chans, size, size, generator=g)
    images = (torch.sigmoid(x) * 255).round().to(torch.uint8)
    return TensorImageDataset(images, labels, tuple(f"class{i}" for i in range(num_classes)), "synthetic")


# -- image folders -----------------------------------------------------------------------------------------------
def print_warning(msg: str) -> None:
    """A notice about the data as one line on stderr (whatever the Python warning filters say)."""
    print(f"convscope: warning: {msg}", file=sys.stderr, flush=True)


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """A single-channel high-bit-depth image as uint8: 16-bit (PIL modes I;16*, and I holding 16-bit values)
    scaled by 255/65535, 32-bit integers by their full range, floats taken as [0, 1] (or [0, 255] when larger)."""
    a = arr.astype(np.float64)
    if mode == "F":
        scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
    elif mode.startswith("I;16") or (a.size and a.min() >= 0 and a.max() <= 65535):
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / (2.0 ** 32 - 1)
        a = a - np.iinfo(np.int32).min if a.min() < 0 else a
    return np.clip(np.nan_to_num(a * scale), 0, 255).round().astype(np.uint8)


EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)   # EXIF orientations that turn the image by 90 degrees (width and height swap)


def probe_images(paths: Sequence[str], sample: int = 64) -> tuple[int, int, bool]:
    """(height, width, grayscale) of a folder's images from the headers of up to `sample` files spread over
    `paths`: the median size as displayed (after EXIF orientation), and whether every sampled file is
    single-channel."""
    from PIL import Image

    if not paths:
        raise ValueError("no image files to probe")
    step = max(1, len(paths) // sample)
    hs, ws, gray = [], [], True
    for p in list(paths)[::step][:sample]:
        try:
            with Image.open(p) as img:
                w, h = img.size
                if img.getexif().get(EXIF_ORIENTATION) in TURNED:
                    w, h = h, w
                gray = gray and (img.mode in ("1", "L", "LA", "P") and _palette_gray(img)
                                 or img.mode.startswith("I") or img.mode == "F")
        except Exception:  # unreadable files are reported by the header check; skip them here
            continue
        hs.append(h)
        ws.append(w)
    if not hs:
        raise ValueError("none of the probed image files could be opened")
    return int(np.median(hs)), int(np.median(ws)), gray


def _palette_gray(img) -> bool:
    """Whether a '1'/'L'/'LA' image is grayscale (always) or a palette image's colours are all grays."""
    if img.mode != "P":
        return True
    pal = img.getpalette() or []
    return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))


def load_image(path: str | os.PathLike, mode: str, load_size: int) -> torch.Tensor:
    """Decode an image file with PIL into a uint8 (C, load_size, load_size) tensor: turned upright as its EXIF
    orientation says, converted to `mode` ('RGB' or 'L'), shorter side resized to load_size, centre-cropped
    square."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.draft(mode, (load_size, load_size))   # JPEG: decode at a reduced scale when that is enough
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode.startswith("I") or img.mode == "F":   # 16/32-bit integer or float: scale, do not saturate
            arr = _to_uint8(np.asarray(img), img.mode)
            if mode == "RGB":
                arr = np.repeat(arr[..., None], 3, axis=-1)
        else:
            arr = np.asarray(img.convert(mode))
    t = torch.from_numpy(arr.copy())
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return center_crop(resize_shorter(t, load_size), load_size)


CHECKS = ("auto", "none", "header", "decode")
AUTO_CHECK_LIMIT = 50_000   # check="auto" opens every file of a folder up to this many, none above
CHECK_THREADS = 8           # threads opening the files of a check (the work waits on the disk as much as the CPU)


def _open_error(path: str, full: bool) -> Exception | None:
    """What opening image file `path` (decoding it whole with `full`, else verifying its header) raised, if any."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load() if full else img.verify()
    except Exception as e:  # PIL raises many types for bad files
        return e
    return None


class ImageFolder(Dataset):
    """Images in `root/<class name>/*.{jpg,png,...}`, decoded with PIL to uint8 (C, load_size, load_size).

    check: what to verify up front (files opened by CHECK_THREADS threads), reporting every bad file by path:
        "header" (open and verify each file, fast), "decode" (decode every image fully), "none", or "auto" (the
        default: "header" for up to AUTO_CHECK_LIMIT files, above that "none" with a one-line notice).
    on_error: "skip" drops bad files (those found up front, and any that fail to decode later, which are reported
        with the batch they were in), "raise" stops with a ValueError naming the first bad file.
    classes: the class names to expect (e.g. a checkpoint's); by default the sorted subdirectory names.
    report: where notices about the files go (one line each); by default `print_warning` (stderr).
    cache: keep every decoded image in memory (one uint8 tensor of N x C x load_size x load_size, filled as the
        images are first read), so each file is decoded once per process rather than once per epoch.
    """

    def __init__(self, root: str | os.PathLike, load_size: int, mode: str = "RGB", on_error: str = "skip",
                 check: str = "auto", classes: Sequence[str] | None = None,
                 report: Callable[[str], None] | None = None, cache: bool = False) -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L'; got {mode!r}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise'; got {on_error!r}")
        if check not in CHECKS:
            raise ValueError(f"check must be one of {', '.join(CHECKS)}; got {check!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.root, self.load_size, self.mode, self.on_error = root, int(load_size), mode, on_error
        self.report = report or print_warning
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        given = classes
        if classes is None:
            classes = found
        else:
            missing = sorted(set(classes) - set(found))
            if missing:
                raise ValueError(f"{root} lacks class directories {missing}; expected {list(classes)}")
        if not classes:
            raise ValueError(f"{root} has no class subdirectories; expected root/<class name>/<image files>")
        self.classes = tuple(classes)
        samples, empty = [], []
        for label, name in enumerate(self.classes):
            found_here = [str(p) for p in sorted((root / name).rglob("*"))
                          if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            if not found_here:
                empty.append(name)
            samples += [(p, label) for p in found_here]
        if empty and given is None and samples:   # training: a class without images cannot be learned
            raise ValueError(f"{root}: class director{'y' if len(empty) == 1 else 'ies'} "
                             f"{', '.join(repr(e) for e in empty)} hold{'s' if len(empty) == 1 else ''} no image files "
                             f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove "
                             f"{'it' if len(empty) == 1 else 'them'}")
        if empty and samples:
            self.report(f"{root}: no images of class(es) {', '.join(repr(e) for e in empty)}")
        if not samples:
            raise ValueError(f"{root} has no image files ({', '.join(IMAGE_EXTENSIONS)}) under its class "
                             "directories")
        self.skipped: list[tuple[str, str]] = []
        if check == "auto" and len(samples) > AUTO_CHECK_LIMIT:
            self.report(f"{root}: {len(samples):,} image files, not opened up front (over {AUTO_CHECK_LIMIT:,}; "
                        "--check-images header opens them all); unreadable ones are skipped as they are met")
        elif check != "none":
            samples = self._verify(samples, full=check == "decode")
        self._set_samples(samples, cache)

    def _set_samples(self, samples: list[tuple[str, int]], cache: bool) -> None:
        """Hold `samples` (name, label) and, with `cache`, the empty decode cache for them."""
        self.samples = samples
        self.labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
        self._cache: torch.Tensor | None = None
        self._cached: torch.Tensor | None = None
        if cache:
            self._cache = torch.empty(len(samples), self.in_chans, self.load_size, self.load_size, dtype=torch.uint8)
            self._cached = torch.zeros(len(samples), dtype=torch.bool)

    def _verify(self, samples: list[tuple[str, int]], full: bool) -> list[tuple[str, int]]:
        """The readable samples, the files opened (and fully decoded with `full`) by a pool of threads."""
        with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
            errors = list(pool.map(lambda s: _open_error(s[0], full), samples))
        good = []
        for (path, label), e in zip(samples, errors, strict=True):
            if e is None:
                good.append((path, label))
            else:
                self._bad(path, e)
        if self.skipped:
            self.report(f"{self.root}: skipped {len(self.skipped)} unreadable image(s): "
                        + "; ".join(f"{p} ({r})" for p, r in self.skipped[:5])
                        + (f"; ... ({len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""))
        if not good:
            raise ValueError(f"{self.root}: none of the {len(samples)} image files could be read")
        return good

    def _bad(self, path: str, e: Exception) -> None:
        reason = f"{type(e).__name__}: {e}"
        if self.on_error == "raise":
            raise ValueError(f"cannot read image {path}: {reason}") from None
        self.skipped.append((path, reason))

    @property
    def image_size(self) -> tuple[int, int]:
        return self.load_size, self.load_size

    @property
    def in_chans(self) -> int:
        return 3 if self.mode == "RGB" else 1

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, n: int) -> IndexSubset:
        """n images spread evenly over the folder (every class represented when n allows), in folder order."""
        if n < 1:
            raise ValueError(f"a subset needs n >= 1; got {n}")
        total = len(self)
        idx = sorted({min(total - 1, (i * total) // n) for i in range(min(n, total))})
        return IndexSubset(self, idx)

    @property
    def cached(self) -> int:
        """How many images are held decoded in memory (0 without a cache)."""
        return 0 if self._cached is None else int(self._cached.sum())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[i]
        if self._cached is not None and self._cached[i]:
            return self._cache[i], label
        try:
            image = self._decode(i)
        except Exception as e:
            self._bad(path, e)
            return None
        if self._cached is not None:
            self._cache[i] = image
            self._cached[i] = True
        return image, label

    def _decode(self, i: int) -> torch.Tensor:
        """Image i decoded from its file."""
        return load_image(self.samples[i][0], self.mode, self.load_size)

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
        items, bad = [], []
        for i in indices:
            item = self[i]
            if item is None:
                bad.append(self.samples[i][0])
            else:
                items.append(item)
        c, s = self.in_chans, self.load_size
        if not items:
            return torch.empty(0, c, s, s, dtype=torch.uint8), torch.empty(0, dtype=torch.long), tuple(bad)
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]), tuple(bad)


CACHE_BYTES = 1 << 30   # decoded folders up to 1 GiB are kept in memory (e.g. 100,000 RGB images at 64x64)


def cache_fits(n: int, in_chans: int, load_size: int, limit: int = CACHE_BYTES) -> bool:
    """Whether n decoded uint8 images of in_chans x load_size x load_size fit the in-memory cache's limit."""
    return n * in_chans * load_size * load_size <= limit


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split of range(n) into (train, held-out) with round(n * fraction) held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1); got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, round(n * fraction))
    return sorted(perm[k:]), sorted(perm[:k])


class IndexSubset(Dataset):
    """A view of `dataset` restricted to `indices`, keeping `get_batch`."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        for attr in ("classes", "image_size", "in_chans", "name"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def get_batch(self, indices: Sequence[int]):
        return fetch_batch(self.dataset, [self.indices[i] for i in indices])


def fetch_batch(dataset: Dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(uint8 images, labels, paths skipped) for `indices`: the dataset's own `get_batch`, else item by item."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(indices)
    items = [dataset[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items]), ()
