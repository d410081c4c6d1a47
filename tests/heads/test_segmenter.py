"""Segmenters over the zoo: every head on every family's smallest variant, training steps on ConvNeXt-atto, the
SEPC neck, counting, and the checks on create_segmenter's options."""
from __future__ import annotations

import functools

import pytest
import torch

import convscope
from convscope.analysis import count
from convscope.heads import HEADS, create_segmenter
from convscope.models import model_card
from tests.conftest import input_size_for


@functools.cache
def smallest_variants() -> dict[str, str]:
    """Each family's variant with the fewest parameters by its card (ties broken by name)."""
    best: dict[str, tuple[float, str]] = {}
    for n in convscope.list_models():
        key = (model_card(n).params_m, n)
        fam = model_card(n).family
        best[fam] = min(best.get(fam, key), key)
    return {fam: n for fam, (_, n) in sorted(best.items())}


FAMILIES = sorted(smallest_variants())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_head_builds_on_the_smallest_variant_meta(family):
    name = smallest_variants()[family]
    with torch.device("meta"):
        backbone = convscope.create_model(name, features_only=True)
        h, w = input_size_for(backbone.model, nonsquare=True)
        feats = backbone(torch.empty(2, 3, h, w))  # once: each head then runs on the same maps
        for head in HEADS:
            seg = create_segmenter(backbone, head, 7, channels=32)
            assert seg.model_name == f"{head}_{name}"
            out = seg.head(feats)
            logits = out[0] if isinstance(out, tuple) else out
            assert logits.shape == (2, 7, *(feats[-1] if head == "fcn" else feats[0]).shape[-2:])


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_runs_forward_with_a_head(family):
    torch.manual_seed(0)
    seg = create_segmenter(smallest_variants()[family], "fcn", 4, channels=16).eval()
    h, w = input_size_for(seg.backbone.model, nonsquare=True)
    with torch.no_grad():
        y = seg(torch.randn(1, 3, h, w))
    assert y.shape == (1, 4, h, w) and torch.isfinite(y).all()


@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_trains_on_convnext_atto_at_a_nonsquare_input(head):
    torch.manual_seed(0)
    seg = create_segmenter("convnext_atto", head, 5, channels=32).train()
    out = seg.forward_train(torch.randn(2, 3, 64, 96))
    assert out["logits"].shape == (2, 5, 64, 96)
    assert (out["aux"] is not None) == (head == "ocr")
    loss = out["logits"].square().mean() + (0 if out["aux"] is None else out["aux"].square().mean())
    loss.backward()
    stem_grad = seg.backbone.model.stem[0].weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert seg.head.cls_seg.weight.grad.abs().sum() > 0


def test_sepc_neck_pads_to_the_deepest_stride_and_crops_back():
    torch.manual_seed(0)
    seg = create_segmenter("convnext_atto", "fpn", 3, neck="sepc", channels=32).eval()
    assert seg.size_divisor == 32 and seg.model_name == "fpn_convnext_atto_sepc"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert seg(torch.randn(1, 3, 70, 90)).shape == (1, 3, 70, 90)
        # an input already a multiple of 32 goes through unpadded: the head's logits upsampled, nothing cropped
        feats = seg.neck(seg.backbone(x))
        assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
        expected = torch.nn.functional.interpolate(seg.head(feats), size=(64, 96), mode="bilinear")
        torch.testing.assert_close(seg(x), expected)


def test_sepc_neck_refuses_a_pyramid_whose_strides_do_not_double():
    with torch.device("meta"), pytest.raises(ValueError, match=r"strides double .* \[16, 16, 16, 16\]"):
        create_segmenter("convit_tiny", "fcn", 3, neck="sepc")


@pytest.mark.parametrize("head", list(HEADS))
def test_a_segmenter_is_counted_completely(head):
    with torch.device("meta"):
        seg = create_segmenter("convnext_atto", head, 5, output_stride=16)
    result = count(seg, (1, 3, 64, 96))
    assert result.uncounted == {}
    with torch.device("meta"):
        backbone_only = convscope.create_model("convnext_atto", features_only=True)
    assert result.totals.macs > count(backbone_only, (1, 3, 64, 96)).totals.macs


@pytest.mark.parametrize("kwargs, message", [
    (dict(head="segformer"), "unknown head 'segformer'; choose one of fcn, fpn, upernet, deeplabv3plus, ocr"),
    (dict(head="fcn", num_classes=0), "num_classes must be a positive integer; got 0"),
    (dict(head="fcn", neck="bifpn"), "unknown neck 'bifpn'"),
    (dict(head="fcn", output_stride=4), "output_stride must be one of (8, 16) or None; got 4"),
    (dict(head="fcn", neck="sepc", output_stride=16), "the SEPC neck needs strides that double"),
])
def test_bad_options_raise_one_line_before_building(kwargs, message, monkeypatch):
    def no_build(*args, **kw):
        raise AssertionError("the backbone was built before the options were checked")
    monkeypatch.setattr("convscope.heads.segmenter.create_model", no_build)
    kwargs.setdefault("num_classes", 3)
    with pytest.raises(ValueError) as info:
        create_segmenter("convnext_atto", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_backbone_given_as_a_module():
    with torch.device("meta"):
        model = convscope.create_model("convnext_atto")
        seg = create_segmenter(model, "upernet", 3)
        assert seg.feature_info.reduction() == [4, 8, 16, 32]
        with pytest.raises(TypeError, match="apply only to a backbone given by name"):
            create_segmenter(convscope.create_model("convnext_atto"), "fcn", 3, drop_path_rate=0.1)
    with pytest.raises(TypeError, match="no forward_intermediates"):
        create_segmenter(torch.nn.Conv2d(3, 3, 1), "fcn", 3)
