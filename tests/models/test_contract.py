"""The model contract, checked on every registered variant below the size cap (and each family's smallest).

Larger variants share their family's code and are built on the meta device by the fidelity suite.
"""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.models import load_checkpoint, save_weights

from ..conftest import built, contract_models, input_size_for

MODELS = contract_models()


def _side_fits(side: int, size: int, reduction: int) -> bool:
    """A feature map side is the input side over the reduction, rounded down or (stride-2 3x3 convs with padding
    1, LSNet: 96 -> 12 -> 6 -> 3 -> 2) up; CrossViT's reduction 17 is timm's rounding of 16 x 240 / 224."""
    return side in (size // reduction, -(-size // reduction))


def _x(model, batch=2, nonsquare=False, chans=None, seed=0):
    h, w = input_size_for(model, nonsquare)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, chans or model.in_chans, h, w, generator=g)


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_features(name):
    model = built(name)
    x = _x(model)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()
    fmt = getattr(model, "features_fmt", "NCHW")  # ViT-style models with a class token declare "NLC" tokens
    assert fmt in ("NCHW", "NLC"), fmt
    if fmt == "NCHW":
        assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
    else:
        assert feats.ndim == 3 and feats.shape[0] == 2 and feats.shape[2] == model.num_features
    assert pre.ndim == 2 and pre.shape[0] == 2
    torch.testing.assert_close(logits, out, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model = built(name).train()
    out = model(_x(model))
    (out.float().square().mean()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    zero = [n for n, p in trainable if p.grad.abs().sum() == 0]
    # A model may declare parameters the logits cannot depend on by construction (CvT's last query projection
    # acts only on spatial tokens, which the class-token head discards): exactly those must have zero gradient.
    declared = getattr(model, "no_logit_grad_prefixes", ())
    expected = [n for n, _ in trainable if n.startswith(tuple(declared))] if declared else []
    assert zero == expected, f"parameters whose gradient is exactly zero: {zero[:5]} (declared: {expected[:5]})"


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name):
    model = built(name)
    x = _x(model, batch=1)
    model.reset_classifier(10)
    assert model.num_classes == 10
    with torch.no_grad():
        assert model(x).shape == (1, 10)
    model.reset_classifier(0)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert model(x).shape == pre.shape


@pytest.mark.parametrize("name", MODELS)
def test_intermediates_match_feature_info(name):
    model = built(name)
    x = _x(model, batch=1, nonsquare=True)
    h, w = x.shape[-2:]
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        feats = model.forward_features(x)
    info = model.feature_info
    assert len(inter) == len(info)
    for t, f in zip(inter, info, strict=False):
        assert t.shape[1] == f["num_chs"], f
        assert _side_fits(t.shape[-2], h, f["reduction"]) and _side_fits(t.shape[-1], w, f["reduction"]), (t.shape, f)
    torch.testing.assert_close(final, feats)
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [t.shape for t in last_two] == [t.shape for t in inter[-2:]]


@pytest.mark.parametrize("name", MODELS)
def test_features_only(name):
    backbone = convscope.create_model(name, features_only=True).eval()
    ref = built(name)
    x = _x(ref, batch=1)
    h, w = x.shape[-2:]
    n_stages = len(ref.feature_info)
    assert backbone.feature_info.channels() == [f["num_chs"] for f in ref.feature_info]
    if getattr(ref, "isotropic", False):  # declared isotropic (WaveMix): every tap at the stem's resolution
        assert len(set(backbone.feature_info.reduction())) == 1
    elif n_stages == 4 and getattr(ref, "features_fmt", "NCHW") == "NCHW":  # hierarchical; token models: patch stride
        stem = getattr(ref, "stem_reduction", 4)  # a stride-4 stem unless the model declares another (LSNet: 8)
        assert stem in (4, 8) and backbone.feature_info.reduction() == [stem, 2 * stem, 4 * stem, 8 * stem]
    with torch.no_grad():
        maps = backbone(x)
    assert [m.shape[1] for m in maps] == backbone.feature_info.channels()
    for m, r in zip(maps, backbone.feature_info.reduction(), strict=False):
        assert _side_fits(m.shape[-2], h, r) and _side_fits(m.shape[-1], w, r), (tuple(m.shape), r)
    picked = convscope.create_model(name, features_only=True, out_indices=(1, -1))
    assert picked.feature_info.channels() == [ref.feature_info[1]["num_chs"], ref.feature_info[-1]["num_chs"]]


@pytest.mark.parametrize("name", MODELS)
def test_one_input_channel(name):
    torch.manual_seed(0)
    model = convscope.create_model(name, in_chans=1, num_classes=7).eval()
    with torch.no_grad():
        out = model(_x(model, batch=1, chans=1))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_non_square_input(name):
    model = built(name)
    x = _x(model, batch=1, nonsquare=True)
    if model.fixed_input_size is not None:
        fh, fw = model.fixed_input_size
        with pytest.raises(ValueError, match=f"{fh}x{fw}"):
            model(torch.randn(1, model.in_chans, fh, fw + 32))
        return
    assert x.shape[-1] != x.shape[-2]
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_safetensors_round_trip(name, tmp_path):
    model = built(name)
    path = save_weights(model, tmp_path / f"{name}.safetensors")
    torch.manual_seed(1)  # a different init (built() uses seed 0): equality can only come from the file
    loaded = convscope.create_model(name, pretrained=str(path)).eval()
    x = _x(model, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with torch.device("meta"):  # loading into a meta-device build takes the file's tensors as they are
        lazy = convscope.create_model(name)
    load_checkpoint(lazy, path)
    with torch.no_grad():  # equal weights; memory-mapped storage may take other SIMD paths (~1e-7)
        torch.testing.assert_close(lazy.eval()(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_wrong_input_raises_value_error(name):
    model = built(name)
    h, w = input_size_for(model)
    c = model.in_chans
    with pytest.raises(ValueError, match="4-D input"):
        model(torch.randn(c, h, w))
    with pytest.raises(ValueError, match=f"expects {c} input channels; got {c + 2}"):
        model(torch.randn(1, c + 2, h, w))
    with pytest.raises(ValueError, match="4-D input"):
        model.forward_intermediates(torch.randn(c, h, w))
    if model.fixed_input_size is None:
        mh, mw = model.min_input_size
        with pytest.raises(ValueError, match=f"at least {mh}x{mw}"):
            model(torch.randn(1, c, mh - 1, mw))


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_matches(name):
    model = built(name).train()
    x = _x(model)
    torch.manual_seed(0)
    model(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)
