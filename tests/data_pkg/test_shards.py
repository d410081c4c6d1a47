"""Image shards (issue 25 item 2): `convscope data pack` writes webdataset-layout tar shards with an index, and the
shards read back give the folder's batches bit for bit, whatever the epoch, resume point or rank."""
from __future__ import annotations

import json
import tarfile
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import main
from convscope.data.loaders import Loader
from convscope.data.open import open_dataset, probe_data
from convscope.data.shards import ShardImages, pack_shards, read_index, shard_size
from convscope.data.transforms import TrainTransform


def _folder(root, per_class=11, splits=None, bad=True):
    """Two classes of random PNGs and JPEGs of mixed sizes, and (bad=True) one file that is not an image."""
    rng = np.random.default_rng(0)
    for split in splits or [None]:
        base = root / split if split else root
        for cls in ("cat", "dog"):
            (base / cls).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (int(rng.integers(14, 30)), int(rng.integers(14, 30)), 3), dtype=np.uint8)
                Image.fromarray(arr).save(base / cls / f"{i:02d}.{'jpg' if i % 3 == 0 else 'png'}")
        if bad:
            (base / "dog" / "broken.png").write_bytes(b"not an image")
    return root


def _batches(dataset, rank, world, epoch, start=0, workers=0):
    tf = TrainTransform(12, (0.5,) * 3, (0.25,) * 3, scale=(0.3, 1.0), hflip=0.5)
    loader = Loader(dataset, tf, 3, train=True, seed=5, rank=rank, world_size=world, workers=workers)
    loader.set_epoch(epoch, start)
    return [(x, y) for x, y in loader]


@pytest.mark.parametrize("rank,world", [(0, 1), (0, 2), (1, 2)])
def test_shards_give_the_folders_batches(tmp_path, rank, world):
    """Same seed: bit-identical images and targets over two epochs and after a mid-epoch resume, the broken file
    left out by both paths."""
    folder = _folder(tmp_path / "img")
    pack_shards(folder, tmp_path / "shards", shard_size("4"), report=lambda m: None)
    notes = []
    opened = [open_dataset(p, load_size=16, held_out=0.25, seed=2, report=notes.append)
              for p in (folder, tmp_path / "shards")]
    assert [len(o.dataset) for o in opened] == [16, 16] and [len(o.held_out) for o in opened] == [6, 6]
    assert opened[1].description.startswith("image shards") and opened[0].skipped[0].endswith("broken.png")
    for epoch in (0, 1):
        a, b = (_batches(o.dataset, rank, world, epoch) for o in opened)
        assert len(a) == len(b) == 16 // world // 3
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    resumed = _batches(opened[1].dataset, rank, world, 1, start=1)
    for (xa, ya), (xb, yb) in zip(a[1:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], _batches(opened[1].dataset, rank, world, 0)[0][0])   # epochs differ
    if world == 1:   # the shards read in a worker process: the same batches
        for (xa, ya), (xb, yb) in zip(a, _batches(opened[1].dataset, rank, world, 1, workers=1), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_pack_is_deterministic_and_webdataset_reads_it(tmp_path):
    """The same folder packed twice: byte-identical shards. Grouped as webdataset groups members (key = the name
    up to the first dot), each sample is its file's bytes and its class index."""
    folder = _folder(tmp_path / "img", per_class=5, bad=False)
    for out in ("a", "b"):
        pack_shards(folder, tmp_path / out, shard_size("3"))
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["all-000000.tar", "all-000001.tar", "all-000002.tar", "all-000003.tar", "index.json"]
    for n in names[:-1]:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    groups = defaultdict(dict)
    for n in names[:-1]:
        with tarfile.open(tmp_path / "a" / n) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                groups[key][ext] = tar.extractfile(m).read()
                assert m.mtime == 0 and m.uid == 0 and m.mode == 0o644
    files = [p for c in ("cat", "dog") for p in sorted((folder / c).iterdir())]
    assert len(groups) == len(files) == 10
    for (_, sample), path in zip(sorted(groups.items()), files, strict=True):
        ext = path.suffix[1:]
        assert set(sample) == {ext, "cls"} and sample[ext] == path.read_bytes()
        assert int(sample["cls"]) == ("cat", "dog").index(path.parent.name)
    index = read_index(tmp_path / "a")
    assert index["classes"] == ["cat", "dog"]
    assert [s["samples"] for s in index["splits"]["all"]["shards"]] == [3, 3, 3, 1]


def test_train_and_val_folders_pack_one_shard_set_per_split(tmp_path):
    folder = _folder(tmp_path / "img", per_class=3, splits=["train", "val"], bad=False)
    pack_shards(folder, tmp_path / "s", shard_size("1KB"))
    facts = probe_data(tmp_path / "s")
    assert facts.kind == "shards" and facts.n_images == 12 and facts.classes == ("cat", "dog")
    assert facts.native_size == probe_data(folder).native_size and facts.gray is False
    for split in ("train", "val"):
        a, b = (open_dataset(p, split, load_size=8).dataset for p in (folder, tmp_path / "s"))
        assert torch.equal(a.get_batch(range(6))[0], b.get_batch(range(6))[0])
        assert torch.equal(a.labels, b.labels)
    held = open_dataset(tmp_path / "s", load_size=8, held_out=0.1)
    assert len(held.dataset) == 6 and len(held.held_out) == 6


def _idx_dir(root, n):
    """Uncompressed Fashion-MNIST-format idx files of n random 28x28 images (and n // 2 test images)."""
    rng = np.random.default_rng(1)
    root.mkdir()
    for prefix, k in (("train", n), ("t10k", n // 2)):
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (k, 28, 28), dtype=np.uint8)),
                          (f"{prefix}-labels-idx1-ubyte", (np.arange(k) % 10).astype(np.uint8))):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            (root / stem).write_bytes(header + arr.tobytes())
    return root


def test_fashion_mnist_packs_as_lossless_pngs(tmp_path):
    src = _idx_dir(tmp_path / "fm", 12)
    pack_shards(src, tmp_path / "s", shard_size("5"))
    index = read_index(tmp_path / "s")
    assert sorted(index["splits"]) == ["test", "train"] and index["gray"] and index["native_size"] == [28, 28]
    mem = open_dataset(src, "train").dataset
    shards = open_dataset(tmp_path / "s", "train", load_size=28, in_chans=1).dataset
    x, y, _ = shards.get_batch(range(12))
    assert torch.equal(x, mem.images) and torch.equal(y, mem.labels)
    assert len(open_dataset(tmp_path / "s", "val", load_size=28).dataset) == 6


def _rewrite(path, fn):
    index = json.loads(path.read_text())
    fn(index)
    path.write_text(json.dumps(index))


@pytest.mark.parametrize("edit,needle", [
    (lambda ix: ix.update(version=9), "format version 9"),
    (lambda ix: ix["splits"]["all"]["shards"][0].update(name="../evil.tar"), "malformed shard entry"),
    (lambda ix: ix["splits"]["all"]["samples"][0].__setitem__(1, 10 ** 9), "malformed sample row"),
    (lambda ix: ix["splits"]["all"]["samples"][0].__setitem__(3, 7), "malformed sample row"),
    (lambda ix: ix["splits"]["all"]["samples"].pop(), "sample counts differ"),
    (lambda ix: ix.update(splits={"train": {}, "all": {}}), "'splits' must be"),
])
def test_a_bad_index_is_one_line_before_any_image_is_read(tmp_path, edit, needle):
    pack_shards(_folder(tmp_path / "img", per_class=2, bad=False), tmp_path / "s", shard_size("2"))
    _rewrite(tmp_path / "s" / "index.json", edit)
    with pytest.raises(ValueError, match=needle) as info:
        open_dataset(tmp_path / "s", load_size=8)
    assert "\n" not in str(info.value) and "index.json" in str(info.value)


def test_a_damaged_shard_is_reported_and_left_out(tmp_path):
    pack_shards(_folder(tmp_path / "img", per_class=2, bad=False), tmp_path / "s", shard_size("2"))
    shard = tmp_path / "s" / "all-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    notes = []
    assert len(ShardImages(tmp_path / "s", "all", 8, check="header", report=notes.append)) == 4 and not notes
    ds = ShardImages(tmp_path / "s", "all", 8, check="decode", report=notes.append)
    assert len(ds) == 2 and "all-000001.tar (ValueError: its SHA-256 differs" in notes[0]
    with pytest.raises(ValueError, match="SHA-256"):
        ShardImages(tmp_path / "s", "all", 8, check="decode", on_error="raise")
    shard.write_bytes(bytes(data[:-512]))
    assert len(ShardImages(tmp_path / "s", "all", 8, check="header", report=notes.append)) == 2


def test_data_pack_command(tmp_path, capsys):
    folder = _folder(tmp_path / "img", per_class=3)
    assert main(["data", "pack", str(folder), "--out", str(tmp_path / "s"), "--shard-size", "4"]) == 0
    out = capsys.readouterr()
    assert "all: 6 images in 2 shard(s)" in out.out and "broken.png" in out.err
    assert main(["data", "pack", str(folder), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists and is not an empty directory" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main(["data", "pack", str(folder), "--out", str(tmp_path / "empty"), "--shard-size", "0"]) == 2
    assert "--shard-size" in capsys.readouterr().err and not any((tmp_path / "empty").iterdir())
    assert main(["data", "pack", str(folder), "--out", str(tmp_path / "empty")]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary directory left
    assert shard_size("256MB").nbytes == 256 << 20 and shard_size("12").samples == 12
