"""Datasets and the batch loader: Fashion-MNIST idx files, image folders with bad files, batch determinism."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.data.datasets import FASHION_MNIST_DIR, ImageFolder, fashion_mnist, read_idx, synthetic
from convscope.data.loaders import BatchRequest, Loader
from convscope.data.mixing import MixupCutMix
from convscope.data.transforms import EvalTransform, TrainTransform


@pytest.fixture(scope="module")
def fmnist_train():
    return fashion_mnist(split="train")


def test_fashion_mnist_from_debian_idx_files(fmnist_train):
    test = fashion_mnist(split="test")
    assert fmnist_train.images.shape == (60000, 1, 28, 28) and fmnist_train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(fmnist_train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean, std = fmnist_train.channel_stats()
    assert mean == pytest.approx((0.2860,), abs=1e-4) and std == pytest.approx((0.3530,), abs=1e-4)  # published


def test_fashion_mnist_from_a_user_directory(tmp_path, fmnist_train):
    """Uncompressed idx files in another directory work too (the first 100 images, rewritten by hand)."""
    for stem, arr in [("train-images-idx3-ubyte", fmnist_train.images[:100, 0].numpy()),
                      ("train-labels-idx1-ubyte", fmnist_train.labels[:100].numpy().astype(np.uint8)),
                      ("t10k-images-idx3-ubyte", fmnist_train.images[:10, 0].numpy()),
                      ("t10k-labels-idx1-ubyte", fmnist_train.labels[:10].numpy().astype(np.uint8))]:
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (tmp_path / stem).write_bytes(header + arr.tobytes())
    ds = fashion_mnist(tmp_path, "train")
    assert torch.equal(ds.images, fmnist_train.images[:100]) and torch.equal(ds.labels, fmnist_train.labels[:100])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fashion_mnist(tmp_path / "nope")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02garbage")
    with pytest.raises(ValueError, match="bad magic"):
        fashion_mnist(tmp_path, "test")


def test_read_idx_checks_the_size(tmp_path):
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 2]) + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + bytes(11))
    with pytest.raises(ValueError, match=r"header says \(3, 4\)"):
        read_idx(tmp_path / "x.gz")
    assert FASHION_MNIST_DIR == "/usr/share/datasets/fashion-mnist"


def _folder(tmp_path, n_per_class=3, size=(20, 30), ext="png"):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.{ext}")
    return tmp_path


def test_image_folder_reads_and_resizes(tmp_path):
    ds = ImageFolder(_folder(tmp_path), load_size=16)
    assert ds.classes == ("cat", "dog") and len(ds) == 6
    x, y = ds[4]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and y == 1
    gray = ImageFolder(tmp_path, load_size=12, mode="L")
    assert gray[0][0].shape == (1, 12, 12)


def test_image_folder_cache_decodes_each_file_once(tmp_path, monkeypatch):
    from convscope.data import datasets
    from convscope.data.datasets import cache_fits

    root = _folder(tmp_path)
    plain = ImageFolder(root, load_size=16)
    expected = plain.get_batch(range(6))
    calls = []
    real = datasets.load_image
    monkeypatch.setattr(datasets, "load_image", lambda *a: calls.append(a[0]) or real(*a))
    cached = ImageFolder(root, load_size=16, cache=True)
    assert cached.cached == 0
    first = cached.get_batch([4, 0, 5])
    again = cached.get_batch([0, 1, 2, 3, 4, 5])
    assert len(calls) == 6 and len(set(calls)) == 6 and cached.cached == 6   # every file decoded exactly once
    assert torch.equal(first[0], expected[0][[4, 0, 5]]) and torch.equal(again[0], expected[0])
    assert torch.equal(again[1], expected[1])
    assert plain.cached == 0
    # the limit: 1 GiB of decoded uint8 images
    assert cache_fits(8_000, 1, 64) and cache_fits(21_845, 3, 128) and not cache_fits(21_846, 3, 128)


def test_image_folder_reports_and_skips_bad_files_up_front(tmp_path):
    root = _folder(tmp_path)
    (root / "dog" / "garbage.png").write_bytes(b"this is not a png")
    messages = []
    ds = ImageFolder(root, load_size=16, report=messages.append)
    assert len(ds) == 6 and [p for p, _ in ds.skipped] == [str(root / "dog" / "garbage.png")]
    assert len(messages) == 1 and "garbage.png" in messages[0]
    with pytest.raises(ValueError, match="cannot read image .*garbage.png"):
        ImageFolder(root, load_size=16, on_error="raise")


def _corrupt_pixels(path):
    """Replace a PNG's compressed pixel data (IDAT) with garbage under a valid CRC: every chunk checks out, but
    decoding fails."""
    import struct
    import zlib

    data, out, pos = path.read_bytes(), [], 8
    out.append(data[:8])
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IDAT":
            body = bytes(range(256)) * (n // 256 + 1)
            body = body[:n]
        out.append(struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body)))
        pos += 12 + n
    path.write_bytes(b"".join(out))


def test_image_folder_bad_file_found_while_loading(tmp_path):
    """A PNG whose chunks verify but whose pixel data does not decode: reported with its batch."""
    root = _folder(tmp_path)
    _corrupt_pixels(root / "cat" / "1.png")
    ds = ImageFolder(root, load_size=16, check="header")
    assert len(ds) == 6 and ds.skipped == []
    assert ds[1] is None and ds.skipped[0][0] == str(root / "cat" / "1.png")
    images, labels, bad = ds.get_batch([0, 1, 2, 3])
    assert images.shape[0] == 3 and bad == (str(root / "cat" / "1.png"),)
    with pytest.raises(ValueError, match="cannot read image .*1.png"):
        ImageFolder(root, load_size=16, check="decode", on_error="raise")
    assert len(ImageFolder(root, load_size=16, check="decode", report=lambda m: None)) == 5


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_reports_bad_files_by_path(tmp_path, workers):
    root = _folder(tmp_path)
    _corrupt_pixels(root / "dog" / "2.png")
    tf = EvalTransform(16, (0.5,) * 3, (0.25,) * 3)
    ds = ImageFolder(root, load_size=16, check="none")
    loader = Loader(ds, tf, batch_size=4, train=False, workers=workers)
    sizes = [x.shape[0] for x, _ in loader]
    assert sizes == [4, 1] and loader.stats.skipped == [str(root / "dog" / "2.png")]
    strict = Loader(ImageFolder(root, load_size=16, check="none", on_error="raise"), tf, 4, train=False,
                    workers=workers)
    with pytest.raises(ValueError) as info:
        list(strict)
    msg = str(info.value)
    assert "2.png" in msg and "\n" not in msg and "Traceback" not in msg   # one clean line, even from a worker


def _collect(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batches_are_a_function_of_epoch_and_step():
    ds = synthetic(64, 4, 16, 3, seed=0)
    tf = TrainTransform(16, (0.5,) * 3, (0.25,) * 3, scale=(0.3, 1.0))
    mixer = MixupCutMix(4, 0.8, 1.0, label_smoothing=0.1)
    main = Loader(ds, tf, 8, train=True, seed=3, mixer=mixer)
    full = _collect(main, epoch=2)
    assert len(full) == 8
    workers = Loader(ds, tf, 8, train=True, seed=3, mixer=mixer, workers=2)
    for a, b in zip(full, _collect(workers, epoch=2), strict=False):               # worker processes: same batches
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for a, b in zip(full[5:], _collect(main, epoch=2, start=5), strict=False):       # resumed at step 5: same batches
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = _collect(main, epoch=3)
    assert not torch.equal(full[0][0], other[0][0])                   # a new epoch reshuffles


def test_two_ranks_together_see_the_single_process_batches():
    """DistributedSampler order: rank r takes positions r, r + 2, ...; so rank 0's batch k and rank 1's batch k
    together are exactly the single-process batch k of twice the size."""
    ds = synthetic(64, 4, 8, 1, seed=0)
    tf = EvalTransform(8, (0.0,), (1.0,))
    single = Loader(ds, tf, 16, train=True, seed=5)
    single.set_epoch(1)
    ranks = [Loader(ds, tf, 8, train=True, seed=5, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    for (xs, ys), (x0, y0), (x1, y1) in zip(single, *ranks, strict=False):
        assert sorted(ys.tolist()) == sorted(torch.cat([y0, y1]).tolist())
        key = lambda x: sorted(map(tuple, x.flatten(1).tolist()))  # noqa: E731
        assert key(xs) == key(torch.cat([x0, x1]))


def test_batch_request_sampler_counts():
    ds = synthetic(50, 2, 8, 1)
    loader = Loader(ds, EvalTransform(8, (0.0,), (1.0,)), 8, train=True)
    assert len(loader) == 6                       # partial batch dropped in training
    assert len(Loader(ds, EvalTransform(8, (0.0,), (1.0,)), 8, train=False)) == 7
    loader.set_epoch(0, 4)
    reqs = list(loader.batch_sampler)
    assert [r.step for r in reqs] == [4, 5] and isinstance(reqs[0], BatchRequest)
    with pytest.raises(ValueError, match="smaller than one batch"):
        Loader(ds, EvalTransform(8, (0.0,), (1.0,)), 64, train=True)


def test_check_images_auto_opens_every_file_only_up_to_its_limit(tmp_path, monkeypatch):
    """check="auto" (the default) verifies every header below AUTO_CHECK_LIMIT files (opened by a thread pool,
    the bad ones reported in folder order); above it, opens none and says so in one line."""
    import convscope.data.datasets as datasets

    root = _folder(tmp_path, n_per_class=3)
    for name in ("cat/x.png", "dog/a.png"):
        (root / name).write_bytes(b"not an image")
    notes = []
    ds = ImageFolder(root, load_size=8, report=notes.append)
    assert len(ds) == 6 and [p for p, _ in ds.skipped] == [str(root / "cat/x.png"), str(root / "dog/a.png")]
    assert "skipped 2 unreadable image(s)" in notes[0]
    monkeypatch.setattr(datasets, "AUTO_CHECK_LIMIT", 7)
    notes.clear()
    ds = ImageFolder(root, load_size=8, report=notes.append)
    assert len(ds) == 8 and ds.skipped == [] and len(notes) == 1
    assert "8 image files, not opened up front (over 7; --check-images header opens them all)" in notes[0]
    assert len(ImageFolder(root, load_size=8, check="header", report=notes.append)) == 6
