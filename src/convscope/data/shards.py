"""Image shards: a data set packed into tar files in webdataset's layout, read back as a map-style dataset.

Layout of a shard directory (written by `pack_shards`, `convscope data pack`):

- `<split>-000000.tar`, ...: tar files whose members are `<key>.<ext>` (the image's bytes as they were stored,
  `png`, `jpg`, ...) followed by `<key>.cls` (the class index as text), the key a zero-padded sample number. This
  is webdataset's format (a member's key is its name up to the first dot), so its readers and other tar tools read
  the shards; we write and read them with the standard library's `tarfile`, not the webdataset package (one more
  dependency for a format the standard library handles, and a streaming reader whose order depends on workers).
- `index.json`: the format and version, class names, native size, and per split its shards (name, samples,
  bytes, SHA-256) and every sample's (shard, offset, size, label, extension). The offsets make the shards a
  map-style dataset: sample i is read at its offset, so the batch loader's shuffling, rank sharding,
  augmentation and resume position apply as they do to an image folder, and a folder and its shards give the same
  batches for the same seed.

Splits: 'all' (an image folder without split subfolders), or 'train' with 'val' or 'test' (a folder's train/ and
val/ or test/, Fashion-MNIST's train and test sets). Output is deterministic: sorted order, tar members with fixed
times, owners and modes, so the same input gives byte-identical shards.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import fsync_dir, read_json
from .datasets import CHECKS, ImageFolder, load_image, print_warning

INDEX = "index.json"
FORMAT, VERSION = "convscope-shards", 1
SPLIT_NAMES = ("all", "train", "val", "test")
_SHARD_NAME = re.compile(r"^(all|train|val|test)-\d{6}\.tar$")
_EXT = re.compile(r"^[a-z0-9]{1,5}$")
_SIZE = re.compile(r"^(\d+)\s*(KB|MB|GB|K|M|G)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}


@dataclass(frozen=True)
class ShardSize:
    """How much one shard holds: `samples` images, or (`nbytes`) images up to that many bytes (at least one)."""

    samples: int | None = None
    nbytes: int | None = None

    def full(self, count: int, size: int, next_size: int) -> bool:
        """Whether a shard holding `count` images of `size` bytes is full before an image of `next_size` bytes."""
        if self.samples is not None:
            return count >= self.samples
        return count > 0 and size + next_size > self.nbytes


def shard_size(text: str) -> ShardSize:
    """'1000' (images per shard) or '256MB' (bytes per shard; K, KB, M, MB, G, GB, binary). ValueError otherwise."""
    m = _SIZE.match(str(text).strip())
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"shard size must be a number of images >= 1 or a size such as 256MB; got {text!r}")
    unit = (m.group(2) or "").upper()
    return ShardSize(samples=int(m.group(1))) if not unit else ShardSize(nbytes=int(m.group(1)) * _UNITS[unit])


# -- writing ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One image to pack: its bytes as stored, the extension they are, and its class index."""

    data: bytes
    ext: str
    label: int


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """A tar member with fixed time, owner and mode (deterministic shards)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    return info, io.BytesIO(data)


def _write_split(out: Path, split: str, samples: Iterator[Sample], size: ShardSize) -> dict[str, Any]:
    """Write one split's shards into `out`; its index entry."""
    shards, rows, tar = [], [], None
    count = nbytes = 0
    try:
        for key, s in enumerate(samples):
            if tar is None or size.full(count, nbytes, len(s.data)):
                if tar is not None:
                    tar.close()
                shards.append(f"{split}-{len(shards):06d}.tar")
                tar = tarfile.open(out / shards[-1], "w", format=tarfile.USTAR_FORMAT)
                count = nbytes = 0
            start = tar.offset   # a USTAR header is one block; the bytes follow it
            tar.addfile(*_member(f"{key:09d}.{s.ext}", s.data))
            tar.addfile(*_member(f"{key:09d}.cls", str(s.label).encode()))
            rows.append([len(shards) - 1, start + tarfile.BLOCKSIZE, len(s.data), s.label, s.ext])
            count, nbytes = count + 1, nbytes + len(s.data)
    finally:
        if tar is not None:
            tar.close()
    if not rows:
        raise ValueError(f"no images to pack into the {split!r} split")
    counts = Counter(r[0] for r in rows)
    files = [dict(name=n, samples=counts[i], bytes=(out / n).stat().st_size, sha256=_sha256(out / n))
             for i, n in enumerate(shards)]
    return dict(shards=files, samples=rows)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_pack_output(out: str | os.PathLike) -> Path:
    """ValueError unless `out` can receive a shard set: absent or an empty directory, its parent writable."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty directory; give a new directory for the shards")
    parent = out.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot create it in {parent} (not a writable directory)")
    return out


def write_shards(out: str | os.PathLike, splits: dict[str, Callable[[], Iterator[Sample]]], size: ShardSize,
                 meta: dict[str, Any]) -> Path:
    """Write each split's samples as shards with an index.json holding `meta` (classes, native_size, gray,
    source) into a temporary directory beside `out`, renamed to `out` when complete."""
    out = check_pack_output(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent))
    try:
        index = dict(format=FORMAT, version=VERSION, **meta,
                     splits={name: _write_split(tmp, name, make(), size) for name, make in splits.items()})
        (tmp / INDEX).write_text(_json(index), encoding="utf-8")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        os.replace(tmp, out)   # onto an absent or empty directory
        fsync_dir(out.resolve().parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _json(obj: Any) -> str:
    """index.json's text: compact (one sample row is about 30 bytes), keys in the order written."""
    import json

    return json.dumps(obj, separators=(",", ":")) + "\n"


def _folder_samples(folder: ImageFolder) -> Callable[[], Iterator[Sample]]:
    def samples() -> Iterator[Sample]:
        for path, label in folder.samples:
            ext = Path(path).suffix.lower().lstrip(".")
            yield Sample(Path(path).read_bytes(), ext, label)
    return samples


def _png_samples(images: torch.Tensor, labels: torch.Tensor) -> Callable[[], Iterator[Sample]]:
    def samples() -> Iterator[Sample]:
        from PIL import Image

        for img, label in zip(images, labels.tolist(), strict=True):
            buf = io.BytesIO()
            arr = img.permute(1, 2, 0).numpy()
            Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
            yield Sample(buf.getvalue(), "png", int(label))
    return samples


def pack_shards(source: str | os.PathLike, out: str | os.PathLike, size: ShardSize, *, check: str = "header",
                report: Callable[[str], None] | None = None) -> Path:
    """Pack `source` into shards in `out` (absent or empty): an image folder (`root/<class>/<images>`, or its
    train/ and val/ or test/, one shard set per split; unreadable files found by `check` are reported and left
    out, as the folder path skips them) or Fashion-MNIST ('fashion-mnist' or an idx directory, as PNGs)."""
    from .open import probe_data

    check_pack_output(out)
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}; got {check!r}")
    facts = probe_data(source)
    if facts.kind in ("fashion-mnist", "idx"):
        from .datasets import fashion_mnist

        root = None if facts.kind == "fashion-mnist" else facts.spec
        parts = {s: fashion_mnist(root, s) for s in ("train", "test")}
        splits = {s: _png_samples(d.images, d.labels) for s, d in parts.items()}
    elif facts.kind == "folder":
        report = report or print_warning
        train = ImageFolder(facts.train_root, 1, check=check, report=report)
        folders = {"all" if facts.train_root == Path(facts.spec) else "train": train}
        if facts.held_out_root is not None:
            folders[facts.held_out_root.name] = ImageFolder(facts.held_out_root, 1, check=check,
                                                            classes=train.classes, report=report)
        splits = {s: _folder_samples(f) for s, f in folders.items()}
    else:
        raise ValueError(f"data pack takes an image folder or Fashion-MNIST; got {facts.spec!r}")
    meta = dict(classes=list(facts.classes), native_size=list(facts.native_size), gray=facts.gray,
                source=str(source))
    return write_shards(out, splits, size, meta)


# -- reading ------------------------------------------------------------------------------------------------------
def is_shard_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding a shard set's index.json."""
    return (Path(path) / INDEX).is_file()


def _fail(root: Path, what: str) -> ValueError:
    return ValueError(f"{root / INDEX}: {what} (expected an index written by convscope data pack)")


def _check_split(root: Path, name: str, entry: Any, n_classes: int) -> None:
    """ValueError unless a split's index entry is well formed: plain shard names, counts and offsets that agree."""
    if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list) or not isinstance(
            entry.get("samples"), list):
        raise _fail(root, f"split {name!r} needs lists 'shards' and 'samples'")
    shards = entry["shards"]
    for s in shards:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and _SHARD_NAME.match(s["name"])
                and isinstance(s.get("bytes"), int) and isinstance(s.get("samples"), int)
                and isinstance(s.get("sha256"), str)):
            raise _fail(root, f"split {name!r} has a malformed shard entry {str(s)[:80]}")
    counts = [0] * len(shards)
    for row in entry["samples"]:
        ok = (isinstance(row, list) and len(row) == 5 and all(isinstance(v, int) for v in row[:4])
              and isinstance(row[4], str) and _EXT.match(row[4]) and 0 <= row[0] < len(shards)
              and 0 <= row[3] < n_classes and row[1] >= 0 and row[2] >= 0)
        if not ok or row[1] + row[2] > shards[row[0]]["bytes"]:
            raise _fail(root, f"split {name!r} has a malformed sample row {str(row)[:80]}")
        counts[row[0]] += 1
    if counts != [s["samples"] for s in shards]:
        raise _fail(root, f"split {name!r}: the shards' sample counts differ from its sample rows")


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    """A shard set's index.json, validated (format, version, classes, splits, every row) before anything is read."""
    root = Path(root)
    index = read_json(root / INDEX)
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise _fail(root, f"not a {FORMAT} index")
    if index.get("version") != VERSION:
        raise _fail(root, f"format version {index.get('version')!r}; this convscope reads version {VERSION}")
    classes, splits, native = index.get("classes"), index.get("splits"), index.get("native_size")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise _fail(root, "'classes' must be a non-empty list of names")
    if not (isinstance(native, list) and len(native) == 2 and all(isinstance(v, int) and v > 0 for v in native)
            and isinstance(index.get("gray"), bool)):
        raise _fail(root, "'native_size' must be [height, width] and 'gray' true or false")
    if not (isinstance(splits, dict) and splits and set(splits) <= set(SPLIT_NAMES)
            and ("all" not in splits or len(splits) == 1)):
        raise _fail(root, f"'splits' must be 'all', or 'train' with 'val' or 'test'; got {list(splits or ())}")
    for name, entry in splits.items():
        _check_split(root, name, entry, len(classes))
    return index


class ShardImages(ImageFolder):
    """One split of a shard set, decoded like an `ImageFolder` (same `load_image`, cache, skipping and reports):
    sample i is read from its shard at its recorded offset. Its samples are named `<shard>:<key>.<ext>`.

    check: "none"; "header" or "auto" (each shard's size against the index); "decode" (also each shard's
        SHA-256). A shard that fails is reported and its images left out, or raises with on_error="raise".
    """

    def __init__(self, root: str | os.PathLike, split: str, load_size: int, mode: str = "RGB",
                 on_error: str = "skip", check: str = "auto", classes: Sequence[str] | None = None,
                 report: Callable[[str], None] | None = None, cache: bool = False,
                 index: dict[str, Any] | None = None) -> None:
        if mode not in ("RGB", "L") or on_error not in ("skip", "raise") or check not in CHECKS:
            raise ValueError(f"mode must be RGB or L, on_error skip or raise, check one of {', '.join(CHECKS)}; "
                             f"got {mode!r}, {on_error!r}, {check!r}")
        self.root, self.load_size, self.mode, self.on_error = Path(root), int(load_size), mode, on_error
        self.report = report or print_warning
        index = index or read_index(root)
        if split not in index["splits"]:
            raise ValueError(f"{root} holds the split(s) {', '.join(index['splits'])}; no {split!r}")
        self.classes = tuple(index["classes"])
        if classes is not None and tuple(classes) != self.classes:
            raise ValueError(f"the data's classes {list(self.classes)} differ from the model's {list(classes)}")
        entry = index["splits"][split]
        self.shard_names = [s["name"] for s in entry["shards"]]
        self.skipped: list[tuple[str, str]] = []
        bad = self._check_shards(entry["shards"], check) if check != "none" else set()
        rows = [r for r in entry["samples"] if r[0] not in bad]
        self.rows = [tuple(r[:3]) for r in rows]
        self._set_samples([(f"{self.shard_names[r[0]]}:{k:09d}.{r[4]}", r[3])
                           for k, r in enumerate(entry["samples"]) if r[0] not in bad], cache)

    def _check_shards(self, shards: list[dict[str, Any]], check: str) -> set[int]:
        """The shards whose file is missing, of another size than the index's or (check 'decode') another
        SHA-256."""
        bad = set()
        for i, s in enumerate(shards):
            path = self.root / s["name"]
            size = path.stat().st_size if path.is_file() else None
            if size != s["bytes"]:
                reason = "missing" if size is None else f"{size} bytes, the index says {s['bytes']}"
            elif check == "decode" and _sha256(path) != s["sha256"]:
                reason = "its SHA-256 differs from the index's"
            else:
                continue
            self._bad(str(path), ValueError(reason))
            bad.add(i)
        if bad:
            self.report(f"{self.root}: left out {len(bad)} shard(s) of {len(shards)}: "
                        + "; ".join(f"{p} ({r})" for p, r in self.skipped[:5]))
        if len(bad) == len(shards):
            raise ValueError(f"{self.root}: none of the {len(shards)} shards could be read")
        return bad

    def _decode(self, i: int) -> torch.Tensor:
        shard, offset, size = self.rows[i]
        with open(self.root / self.shard_names[shard], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return load_image(io.BytesIO(data), self.mode, self.load_size)
