"""Batch transforms: shapes, values, determinism under a seed."""
from __future__ import annotations

import math

import pytest
import torch

from convscope.data.transforms import (
    EvalTransform,
    RandAugmentLite,
    TrainTransform,
    center_crop,
    crop_affine,
    normalize,
    random_resized_crop_boxes,
    resize,
    to_float,
    warp,
)


def _images(n=6, c=3, h=28, w=28, seed=0):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_resize_and_crop_shapes():
    x = _images(2, 3, 28, 40)
    assert resize(x, 32).shape == (2, 3, 32, 32) and resize(x, 32).dtype == torch.uint8
    assert resize(x[0], (16, 20)).shape == (3, 16, 20)
    assert center_crop(x, 20).shape == (2, 3, 20, 20)
    assert torch.equal(center_crop(x, (28, 40)), x)
    with pytest.raises(ValueError, match="cannot take 30x30"):
        center_crop(x, 30)


def test_resize_of_a_constant_image_is_constant():
    x = torch.full((1, 1, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(resize(x, 32), torch.full((1, 1, 32, 32), 77, dtype=torch.uint8))
    assert torch.equal(resize(x, 9), torch.full((1, 1, 9, 9), 77, dtype=torch.uint8))


def test_normalize_values():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    y = normalize(x, (0.5, 0.5, 0.25), (0.5, 0.25, 0.25))
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([-1.0, 0.0, 3.0]))
    with pytest.raises(ValueError, match="3 channels but mean/std have 1/1"):
        normalize(x, (0.5,), (0.5,))


def test_eval_transform_values():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    y = EvalTransform(32, (0.5,), (0.25,))(x)
    assert y.shape == (2, 1, 32, 32) and torch.allclose(y, torch.full_like(y, 2.0))
    # crop_pct keeps the centre: a 28x28 image whose border is 0 and centre 255 becomes all 255
    x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    x[..., 2:26, 2:26] = 255
    y = EvalTransform(24, (0.0,), (1.0,), crop_pct=24 / 28)(x)
    assert torch.equal(y, torch.ones(1, 1, 24, 24))


def test_identity_warp_is_exact():
    """A full-image box, no flip, output size = input size: grid_sample hits every pixel centre (to float
    rounding of the sampling grid)."""
    x = to_float(_images(3, 3, 28, 28))
    boxes = torch.tensor([[0.0, 0.0, 28.0, 28.0]]).repeat(3, 1)
    assert torch.allclose(warp(x, crop_affine(boxes, 28, 28, 28), 28), x, atol=1e-5)
    flip = torch.tensor([True, False, True])
    y = warp(x, crop_affine(boxes, 28, 28, 28, flip=flip), 28)
    assert torch.allclose(y[0], x[0].flip(-1), atol=1e-5) and torch.allclose(y[1], x[1], atol=1e-5)


def test_crop_affine_samples_the_box():
    """Cropping a box and resizing it to its own size gives exactly that window of the image."""
    x = to_float(_images(1, 1, 20, 30))
    boxes = torch.tensor([[5.0, 3.0, 12.0, 8.0]])   # x0, y0, w, h
    y = warp(x, crop_affine(boxes, 20, 30, (8, 12)), (8, 12))
    assert torch.allclose(y, x[..., 3:11, 5:17], atol=1e-5)


def test_random_resized_crop_boxes_respect_ranges():
    g = torch.Generator().manual_seed(0)
    b = random_resized_crop_boxes(2000, 40, 60, scale=(0.2, 0.9), ratio=(0.5, 2.0), generator=g)
    x0, y0, w, h = b.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 60).all() and (y0 + h <= 40).all()
    area = w * h / (40 * 60)
    assert area.min() > 0.2 * 0.9 and area.max() < 0.9 * 1.1     # rounding of w and h
    assert (w / h).min() > 0.5 * 0.85 and (w / h).max() < 2.0 * 1.15
    assert area.std() > 0.1   # spread over the range, not stuck at one value


def test_train_transform_is_deterministic_under_a_seed():
    x = _images(8)
    tf = TrainTransform(32, (0.5,) * 3, (0.25,) * 3, scale=(0.3, 1), hflip=0.5, randaugment=RandAugmentLite(2, 9))
    a = tf(x, torch.Generator().manual_seed(123))
    b = tf(x, torch.Generator().manual_seed(123))
    c = tf(x, torch.Generator().manual_seed(124))
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_train_transform_without_randomness_is_a_resize():
    x = _images(4, 1, 28, 28)
    tf = TrainTransform(28, (0.0,), (1.0,), scale=(1, 1), ratio=(1, 1), hflip=0.0)
    assert torch.allclose(tf(x, torch.Generator().manual_seed(0)), to_float(x), atol=1e-5)
    tf = TrainTransform(28, (0.0,), (1.0,), scale=(1, 1), ratio=(1, 1), hflip=1.0)
    assert torch.allclose(tf(x, torch.Generator().manual_seed(0)), to_float(x).flip(-1), atol=1e-5)


def test_randaugment_geometry():
    ra = RandAugmentLite(1, magnitude=30)
    ops = torch.tensor([[ra.OPS.index("rotate")], [ra.OPS.index("translate_x")], [ra.OPS.index("shear_y")],
                        [ra.OPS.index("brightness")]])
    signs = torch.tensor([[1.0], [-1.0], [1.0], [1.0]])
    m, t = ra.geometry(ops, signs, (32, 32))
    a = math.radians(30)
    assert torch.allclose(m[0], torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]))
    assert torch.allclose(t[1], torch.tensor([-0.45 * 32, 0.0]))
    assert torch.allclose(m[2], torch.tensor([[1.0, 0.0], [0.3, 1.0]]))
    assert torch.equal(m[3], torch.eye(2)) and torch.equal(t[3], torch.zeros(2))


def test_randaugment_color_ops():
    ra = RandAugmentLite(1, magnitude=15)   # level 0.5
    x = torch.tensor([0.0, 0.2, 0.6, 1.0]).view(1, 1, 2, 2).repeat(4, 1, 1, 1)
    ops = torch.tensor([[ra.OPS.index(n)] for n in ("solarize", "posterize", "brightness", "identity")])
    y = ra.color(x.clone(), ops, torch.tensor([[1.0], [1.0], [-1.0], [1.0]]))
    assert torch.allclose(y[0].flatten(), torch.tensor([0.0, 0.2, 0.4, 0.0]))      # >= 0.5 inverted
    step = 2 ** (8 - 6) / 255                                                         # 6 bits at level 0.5
    assert torch.allclose(y[1].flatten(), (torch.tensor([0, 51, 153, 255.0]) / 4).floor() * 4 / 255, atol=1e-5)
    assert step > 0 and torch.allclose(y[2].flatten(), x[2].flatten() * (1 - 0.45))  # brightness factor 0.55
    assert torch.equal(y[3], x[3])


def test_whole_image_crops_take_the_resize_shortcut_with_the_same_values():
    """scale=(1, 1): every box is the whole image, so TrainTransform resizes instead of warping; the values are
    those of the warp (both are bilinear with half-pixel centres; upsampling needs no antialiasing)."""
    x = _images(6, 1, 28, 28)
    tf = TrainTransform(32, (0.0,), (1.0,), scale=(1, 1), ratio=(1, 1), hflip=0.5)
    g = torch.Generator().manual_seed(7)
    fast = tf(x, g)
    g = torch.Generator().manual_seed(7)
    boxes = random_resized_crop_boxes(6, 28, 28, (1, 1), (1, 1), g)
    flip = torch.rand(6, generator=g) < 0.5
    assert 0 < int(flip.sum()) < 6
    slow = warp(to_float(x), crop_affine(boxes, 28, 28, 32, flip), 32, fill_zero=False)
    assert torch.allclose(fast, slow, atol=1e-5)
