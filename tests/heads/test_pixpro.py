"""PixPro: the positive pairs and the loss against a per-cell reference written from the paper's definitions, the
pixel-propagation module against its formula, the momentum schedule and update, the two views' crop coordinates
against what the views show, and the encoder's weights loading into `create_model`."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from convscope.heads.pixpro import PixelPropagation, PixPro, cell_centres, pixpro_loss, positive_pairs
from convscope.models import create_model
from convscope.train.pretraining import TwoViews

TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}


def _coords(n: int, g: torch.Generator) -> torch.Tensor:
    """Random crops (x0, y0, x1, y1) in [0, 1], a third of them flipped (x0 > x1)."""
    a, b = torch.rand(n, 2, generator=g) * 0.5, 0.5 + torch.rand(n, 2, generator=g) * 0.5
    c = torch.cat([a, b], 1)
    flip = torch.arange(n) % 3 == 0
    return torch.where(flip.view(-1, 1), c[:, [2, 1, 0, 3]], c)


def _reference_loss(q, k, cq, ck, ratio):
    """Cell by cell: the centre of cell (i, j) of a view cropped to (x0, y0, x1, y1) is (x0 + (j + 1/2)(x1 - x0)/w,
    y0 + (i + 1/2)(y1 - y0)/h); a pair is positive when the centres are closer than `ratio` times the larger cell
    diagonal; each image's loss is the mean cosine over its positive pairs; the batch's is -2 x their mean."""
    b, _, h, w = q.shape
    total = 0.0
    def centre(c, n, i, j):
        x0, y0, x1, y1 = (float(v) for v in c[n])
        return x0 + (j + 0.5) * (x1 - x0) / w, y0 + (i + 0.5) * (y1 - y0) / h

    def diag(c, n):
        x0, y0, x1, y1 = (float(v) for v in c[n])
        return math.hypot((x1 - x0) / w, (y1 - y0) / h)

    for n in range(b):
        radius = ratio * max(diag(cq, n), diag(ck, n))
        s, m = 0.0, 0
        for i, j, u, v in ((i, j, u, v) for i in range(h) for j in range(w) for u in range(h) for v in range(w)):
            (ax, ay), (bx, by) = centre(cq, n, i, j), centre(ck, n, u, v)
            if math.hypot(ax - bx, ay - by) < radius:
                s += float((q[n, :, i, j] * k[n, :, u, v]).sum())
                m += 1
        total += s / (m + 1e-6)
    return -2 * total / b


def test_loss_equals_the_per_cell_reference():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 6, 3, 4, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(5, 6, 3, 4, generator=g, dtype=torch.float64), dim=1)
    cq, ck = _coords(5, g).double(), _coords(5, g).double()
    for ratio in (0.7, 2.0):
        ours = float(pixpro_loss(q, k, cq, ck, ratio))
        assert ours == pytest.approx(_reference_loss(q, k, cq, ck, ratio), abs=1e-12)
    assert positive_pairs(cq, ck, 3, 4, 2.0).any() and not positive_pairs(cq, ck, 3, 4, 2.0).all()


def test_identical_views_pair_each_cell_with_itself_only_and_agreeing_features_score_minus_two():
    """The nearest other cell is one cell width away, 1/sqrt(2) of a square cell's diagonal: above 0.7."""
    c = torch.tensor([[0.1, 0.2, 0.9, 1.0], [0.9, 0.0, 0.1, 0.8]], dtype=torch.float64)
    assert torch.equal(positive_pairs(c, c, 4, 4), torch.eye(16, dtype=torch.bool).expand(2, -1, -1))
    f = F.normalize(torch.randn(2, 3, 4, 4, dtype=torch.float64), dim=1)
    assert float(pixpro_loss(f, f, c, c)) == pytest.approx(-2 * 16 / (16 + 1e-6), abs=1e-12)   # 1e-6: no pair
    # flipping one view reverses the columns its cells cover: cell (i, j) of one meets (i, w-1-j) of the other
    flipped = c[:, [2, 1, 0, 3]]
    pairs = positive_pairs(c, flipped, 4, 4)[0].nonzero().tolist()
    assert pairs == [[i * 4 + j, i * 4 + 3 - j] for i in range(4) for j in range(4)]


def test_cell_centres_of_a_crop():
    c = torch.tensor([[0.0, 0.5, 1.0, 1.0]])
    centres = cell_centres(c, 2, 2)[0]
    assert torch.allclose(centres, torch.tensor([[0.25, 0.625], [0.75, 0.625], [0.25, 0.875], [0.75, 0.875]]))


def test_pixel_propagation_equals_its_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, 3, generator=g, dtype=torch.float64)
    for layers, p, clamp in ((1, 2.0, 0.0), (0, 1.0, 0.0), (2, 0.5, 0.0), (1, 3.0, -0.2)):
        ppm = PixelPropagation(5, p, clamp, layers).double().eval()
        y = ppm(x)
        value = F.normalize(ppm.value(x), dim=1)
        unit = F.normalize(x, dim=1)
        for n, i, j in ((0, 0, 0), (1, 2, 1)):
            want = torch.zeros(5, dtype=torch.float64)
            for u in range(3):
                for v in range(3):
                    s = max(float((unit[n, :, i, j] * unit[n, :, u, v]).sum()), clamp) + (1e-6 if p < 1 else 0)
                    want += s ** p * value[n, :, u, v]
            assert torch.allclose(y[n, :, i, j], want, atol=1e-12), (layers, p)
    with pytest.raises(ValueError, match="transform_layers"):
        PixelPropagation(5, transform_layers=3)
    with pytest.raises(ValueError, match="a whole p"):   # a negative similarity to a fractional power
        PixelPropagation(5, p=0.5, clamp=-0.1)


def _tiny(**kw) -> PixPro:
    torch.manual_seed(0)
    return PixPro("convnext_atto", in_chans=1, proj_dim=16, total_steps=4, **TINY, **kw)


def test_momentum_rises_along_a_half_cosine_and_moves_the_target_only_in_training():
    model = _tiny(momentum=0.9)
    assert [round(model.momentum_at(k), 12) for k in range(5)] == [
        round(1 - 0.1 * (math.cos(math.pi * k / 4) + 1) / 2, 12) for k in range(5)]
    assert model.momentum_at(0) == pytest.approx(0.9) and model.momentum_at(4) == 1.0
    assert all(not p.requires_grad for p in [*model.encoder_target.parameters(), *model.projector_target.parameters()])
    with torch.no_grad():   # online weights away from the target's (which start as copies)
        for p in [*model.encoder.parameters(), *model.projector.parameters()]:
            p.add_(0.5)
    before = [p.clone() for p in model.encoder_target.parameters()]
    online = [p.clone() for p in model.encoder.parameters()]
    x = torch.randn(2, 1, 64, 64)
    c = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    model.eval()
    model(x, x, c, c)
    with torch.no_grad():
        model.train()(x, x, c, c)   # no gradients: nothing moves
    assert int(model.updates) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.encoder_target.parameters(), strict=True))
    loss = model.train()(x, x.flip(-1), c, c[:, [2, 1, 0, 3]])
    loss.backward()
    assert int(model.updates) == 1
    m = model.momentum_at(0)
    for t, b, o in zip(model.encoder_target.parameters(), before, online, strict=True):
        assert torch.allclose(t, m * b + (1 - m) * o, atol=1e-6)
        assert t.grad is None
    assert all(p.grad is not None for p in model.projector.parameters())


def test_two_views_coordinates_say_where_each_view_looks():
    """On an image whose pixel values are its own x (columns) coordinate, each view's pixel at a cell centre shows
    the x that cell_centres gives for it (flipped views included); likewise for y."""
    size, n = 48, 12
    xs = (torch.arange(size) + 0.5) / size
    ramp_x = (xs.view(1, 1, 1, -1).expand(n, 1, size, size) * 250).round().to(torch.uint8)
    ramp_y = ramp_x.transpose(-1, -2)
    views = TwoViews(16, (0.0,), (1 / 250,), scale=(0.3, 1.0), hflip=0.5, jitter_p=0.0, solarize=(0.0, 0.0))
    seen_flip = False
    for ramp, axis in ((ramp_x, 0), (ramp_y, 1)):
        v1, v2, c1, c2 = views(ramp, torch.Generator().manual_seed(7))
        for v, c in ((v1, c1), (v2, c2)):
            seen_flip |= bool((c[:, 0] > c[:, 2]).any())
            centres = cell_centres(c, 4, 4)                         # 4x4 cells of 4x4 pixels each
            shown = F.avg_pool2d(v, 4).flatten(1) / 250             # the mean pixel of each cell: its centre's value
            assert torch.allclose(shown, centres[..., axis], atol=0.02), axis
    assert seen_flip


def test_two_views_are_a_function_of_the_generator():
    x = torch.randint(0, 256, (4, 1, 20, 20), dtype=torch.uint8)
    views = TwoViews(16, (0.5,), (0.25,))
    a = views(x, torch.Generator().manual_seed(3))
    b = views(x, torch.Generator().manual_seed(3))
    assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1]) and a[0].shape == (4, 1, 16, 16) and a[2].shape == (4, 4)


def test_encoder_weights_load_into_create_model_with_only_the_head_missing():
    model = _tiny()
    full = create_model("convnext_atto", in_chans=1, **TINY)
    missing, unexpected = full.load_state_dict(model.encoder_state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["head.fc.bias", "head.fc.weight", "head.norm.bias",
                                                    "head.norm.weight"]
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(full.forward_features(x), model.encoder(x)[-1])


def test_bad_inputs_are_refused():
    model = _tiny()
    x = torch.randn(2, 1, 64, 64)
    c = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="two views of one shape"):
        model(x, x[:1], c, c)
    with pytest.raises(ValueError, match=r"crop coordinates of shape \(2, 4\)"):
        model(x, x, c[:, :3], c)
    with pytest.raises(ValueError, match="momentum must be in"):
        _tiny(momentum=1.0)
