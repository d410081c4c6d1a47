"""Fashion-MNIST mosaics: deterministic, disjoint sources per split, masks that label what was drawn; the
images/ + masks/ folder reader and its one-line errors naming the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convscope.data.mosaic import (
    FOREGROUND,
    SPLITS,
    SegmentationFolder,
    _source,
    make_mosaics,
    write_mosaics,
)

SIZE = (48, 64)


def test_mosaics_are_deterministic_and_independent_of_count():
    a = make_mosaics("train", 3, size=SIZE, seed=7)
    b = make_mosaics("train", 5, size=SIZE, seed=7)
    np.testing.assert_array_equal(a.images, b.images[:3])
    np.testing.assert_array_equal(a.masks, b.masks[:3])
    assert a.sources == b.sources[:3]
    c = make_mosaics("train", 3, size=SIZE, seed=8)
    assert not np.array_equal(a.masks, c.masks)


def test_splits_draw_from_disjoint_source_images():
    train = make_mosaics("train", 40, size=SIZE)
    val = make_mosaics("val", 40, size=SIZE)
    train_src = {j for s in train.sources for j in s}
    val_src = {j for s in val.sources for j in s}
    assert train_src and val_src and not train_src & val_src
    assert max(train_src) < SPLITS["train"][2] <= min(val_src)


def test_masks_label_the_drawn_items():
    root = "/usr/share/datasets/fashion-mnist"
    _, labels = _source(root, "train")
    m = make_mosaics("val", 6, size=SIZE, items=(2, 4))
    for image, mask, src in zip(m.images, m.masks, m.sources, strict=True):
        assert 2 <= len(src) <= 4
        classes = set(np.unique(mask).tolist()) - {0}
        assert classes and classes <= {int(labels[j]) + 1 for j in src}
        assert (image[mask > 0] > FOREGROUND).all()   # labelled pixels are item pixels ...
        assert (image[mask == 0] == 0).all()          # ... and the rest is the black canvas
        # the last item drawn is on top: its class owns at least one pixel
        assert int(labels[src[-1]]) + 1 in classes


def test_folder_round_trip(tmp_path):
    write_mosaics(tmp_path, "val", 3, size=SIZE)
    ds = SegmentationFolder(tmp_path)
    m = make_mosaics("val", 3, size=SIZE)
    assert len(ds) == 3
    image, mask = ds[1]
    assert tuple(image.shape) == (1, *SIZE) and tuple(mask.shape) == SIZE
    np.testing.assert_array_equal(image[0].numpy(), m.images[1])
    np.testing.assert_array_equal(mask.numpy(), m.masks[1])


def _folder(tmp_path, mask_size=(8, 6), mask_values=0, mask_mode="L", extra_mask=False, no_mask=False):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "a.jpg")
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "b.png")
    Image.new("L", (8, 6)).save(tmp_path / "masks" / "a.png")
    if not no_mask:
        Image.new(mask_mode, mask_size, mask_values).save(tmp_path / "masks" / "b.png")
    if extra_mask:
        Image.new("L", (8, 6)).save(tmp_path / "masks" / "c.png")
    return tmp_path


@pytest.mark.parametrize("options, message", [
    (dict(no_mask=True), r"images/b.png: image without a mask \(expected .*masks/b.png\)"),
    (dict(extra_mask=True), r"masks/c.png: mask without an image"),
    (dict(mask_size=(8, 5)), r"masks/b.png: mask is 8x5 \(WxH\) but its image b.png is 8x6"),
    (dict(mask_values=11), r"masks/b.png: label 11 is outside 0..10 \(and the ignore index 255\)"),
    (dict(mask_mode="RGB"), r"masks/b.png: a mask must be a single-channel PNG"),
])
def test_folder_errors_name_the_file_in_one_line(tmp_path, options, message):
    root = _folder(tmp_path, **options)
    with pytest.raises(ValueError, match=message) as info:
        SegmentationFolder(root)
    assert "\n" not in str(info.value)


def test_folder_accepts_the_ignore_index_and_reads_rgb(tmp_path):
    root = _folder(tmp_path, mask_values=255)
    image, mask = SegmentationFolder(root)[1]
    assert tuple(image.shape) == (3, 6, 8) and mask.unique().tolist() == [255]
    with pytest.raises(ValueError, match="images: no such directory"):
        SegmentationFolder(tmp_path / "masks")
