"""Segmentation metrics against a hand-computed confusion matrix, the losses' values, sliding-window inference."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from convscope.train.dense import DiceLoss, SegmentationMetrics, cross_entropy, predict_logits, segmentation_loss

TARGET = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
PRED = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
# (true, predicted) pairs, the ignored pixel left out: (0,0) (0,1) (1,1) (1,2) (2,2)
CONFUSION = [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
IOU = [1 / 2, 1 / 3, 1 / 2]  # TP / (row + column - TP): 1/2, 1/(2+2-1), 1/(1+2-1)


def test_metrics_match_the_hand_computed_confusion_matrix():
    m = SegmentationMetrics(3)
    m.update(PRED, TARGET)
    r = m.compute()
    assert r["confusion"].tolist() == CONFUSION
    assert r["iou_per_class"].tolist() == pytest.approx(IOU)
    assert r["miou"] == pytest.approx(4 / 9)
    assert r["pixel_acc"] == pytest.approx(3 / 5)


def test_metrics_take_logits_accumulate_and_skip_undefined_classes():
    m = SegmentationMetrics(4)
    logits = torch.nn.functional.one_hot(PRED, 4).permute(0, 3, 1, 2).float()
    m.update(logits, TARGET)
    m.update(PRED, TARGET)
    r = m.compute()
    assert r["confusion"][:3, :3].tolist() == [[2 * v for v in row] for row in CONFUSION]
    assert math.isnan(r["iou_per_class"][3])  # class 3 is neither labelled nor predicted
    assert r["miou"] == pytest.approx(4 / 9)
    m.reset()
    with pytest.raises(ValueError, match="no labelled pixels"):
        m.compute()


@pytest.mark.parametrize("pred, target, message", [
    (PRED, torch.tensor([[[0, 0, 3], [1, 2, 255]]]), "target holds label 3, outside 0..2"),
    (PRED, torch.tensor([[[0, -1, 1], [1, 2, 255]]]), "target holds label -1"),
    (PRED[..., :2], TARGET, "differ in shape"),
    (torch.zeros(1, 5, 2, 3), TARGET, "logits have 5 classes; the metric counts 3"),
    (PRED, TARGET.float(), "target must be integer labels"),
])
def test_metrics_reject_bad_batches_in_one_line(pred, target, message):
    with pytest.raises(ValueError, match=message) as info:
        SegmentationMetrics(3).update(pred, target)
    assert "\n" not in str(info.value)


def test_dice_loss_value():
    # two classes, uniform softmax (0.5), four pixels of class 0 and one ignored pixel:
    # class 0: (2 * 2 + 1) / (2 + 4 + 1) = 5/7; class 1: (0 + 1) / (2 + 0 + 1) = 1/3; loss = 1 - (5/7 + 1/3) / 2
    target = torch.tensor([[[0, 0, 0], [0, 255, 255]]])
    loss = DiceLoss()(torch.zeros(1, 2, 2, 3), target)
    assert loss.item() == pytest.approx(10 / 21)
    perfect = torch.nn.functional.one_hot(target.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 50
    assert DiceLoss()(perfect, target).item() == pytest.approx(0, abs=1e-6)


def test_cross_entropy_ignores_the_ignore_index():
    target = torch.tensor([[[0, 1, 255]]])
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 0, 0, 2] = 100.0  # would dominate the mean if the ignored pixel were counted
    assert cross_entropy(logits, target).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match=r"logits must be \(batch, classes, height, width\)"):
        cross_entropy(torch.zeros(1, 2, 2, 3), target)
    aux = torch.zeros(1, 2, 1, 3)
    total = segmentation_loss({"logits": logits, "aux": aux}, target, aux_weight=0.5)
    assert total.item() == pytest.approx(1.5 * math.log(2))


@pytest.mark.parametrize("window, stride", [((4, 4), None), ((4, 6), (2, 3)), ((16, 16), None)])
def test_sliding_window_equals_whole_image_for_a_per_pixel_model(window, stride):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    images = torch.randn(2, 3, 10, 13)
    whole = predict_logits(model, images, 5)
    slide = predict_logits(model, images, 5, window=window, stride=stride)
    torch.testing.assert_close(slide, whole)


def test_sliding_window_averages_overlapping_windows():
    # a model whose logit is the window's mean: overlapping windows give different values, averaged per pixel
    def window_mean(x):
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])
    images = torch.arange(6.0).reshape(1, 1, 1, 6)
    out = predict_logits(window_mean, images, 1, window=(1, 4), stride=(1, 2))
    # windows [0:4] (mean 1.5) and [2:6] (mean 3.5): pixels 2 and 3 are covered by both
    assert out.flatten().tolist() == [1.5, 1.5, 2.5, 2.5, 3.5, 3.5]
