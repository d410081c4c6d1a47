"""CvT: logits against Hugging Face transformers' CvtForImageClassification (built from a hand-written CvtConfig,
nothing downloaded), the official-key and transformers-key converters, the convolutional projection's shapes."""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.layers.mixers.conv_attention import ConvProjectionAttention
from convscope.models import load_checkpoint
from convscope.models.cvt import QuickGELU, convert_official

from ..conftest import import_timm, randomize_, rel_err

# (depths, embed dims, heads, last-stage drop path) of experiments/imagenet/cvt/*.yaml @f851e68
HF_ARCH = {"cvt_13_224": ((1, 2, 10), (64, 192, 384), (1, 3, 6)),
           "cvt_21_224": ((1, 4, 16), (64, 192, 384), (1, 3, 6)),
           "cvt_w24_384": ((2, 2, 20), (192, 768, 1024), (3, 12, 16))}


def _hf_model(name: str, quick_gelu: bool):
    import_timm()  # transformers imports torchvision, which needs the same shim on a CPU-only torch
    from transformers import CvtConfig, CvtForImageClassification

    depths, dims, heads = HF_ARCH[name]
    cfg = CvtConfig(depth=list(depths), embed_dim=list(dims), num_heads=list(heads), num_labels=1000)
    torch.manual_seed(0)
    with torch.device("meta"):
        hf = CvtForImageClassification(cfg)
    hf = randomize_(hf.to_empty(device="cpu"), seed=2).eval()
    if quick_gelu:  # the official code's MLP activation; transformers' port uses exact GELU
        for stage in hf.cvt.encoder.stages:
            for layer in stage.layers:
                layer.intermediate.activation = QuickGELU()
    return hf


@pytest.mark.parametrize("name,quick_gelu,sizes", [
    ("cvt_13_224", True, [(224, 224), (160, 288)]),
    ("cvt_13_224", False, [(224, 224)]),
    ("cvt_21_224", True, [(96, 128)]),
])
def test_logits_match_transformers(name, quick_gelu, sizes):
    hf = _hf_model(name, quick_gelu)
    with torch.device("meta"):
        ours = convscope.create_model(name, mlp_act="quick_gelu" if quick_gelu else "gelu")
    load_checkpoint(ours, hf.state_dict(), source="transformers")  # strict
    ours.eval()
    g = torch.Generator().manual_seed(0)
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, generator=g)
        with torch.no_grad():
            want, got = hf(pixel_values=x).logits, ours(x)
        assert want.abs().max() > 1e-3
        assert rel_err(got, want) < 1e-5, (h, w, rel_err(got, want))


def test_official_converter_maps_the_official_layout():
    model = convscope.create_model("cvt_13_224")
    ours = model.state_dict()
    official = {}
    for k, v in ours.items():  # the official names (lib/models/cls_cvt.py @f851e68)
        k = k.replace("stages.", "stage").replace("head.norm.", "norm.").replace("head.fc.", "head.")
        official[k] = v
    assert "stage2.cls_token" in official and "stage0.blocks.0.attn.conv_proj_k.bn.running_var" in official
    assert set(convert_official(official, model)) == set(ours)


def test_conv_projection_shapes():
    attn = ConvProjectionAttention(64, num_heads=2, num_prefix_tokens=1).eval()
    x = torch.randn(2, 1 + 7 * 9, 64)
    shapes = {}
    for n in ("q", "k", "v"):
        getattr(attn, f"conv_proj_{n}").register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape))
    assert attn(x, (7, 9)).shape == x.shape
    assert shapes["q"] == (2, 64, 7, 9)                # stride 1 for the queries
    assert shapes["k"] == shapes["v"] == (2, 64, 4, 5)  # stride 2 (pad 1) for keys and values
    assert attn.conv_proj_q.conv.groups == 64 and attn.conv_proj_q.conv.bias is None


def test_conv_projection_attention_is_attention_on_projected_tokens():
    """With identity projections (1x1 depthwise conv of weight 1, BN identity) it is plain multi-head attention
    scaled by dim**-0.5."""
    torch.manual_seed(0)
    dim, heads = 32, 4
    attn = ConvProjectionAttention(dim, heads, kernel_size=1, stride_kv=1).eval()
    for n in ("q", "k", "v"):
        getattr(attn, f"conv_proj_{n}").conv.weight.data.fill_(1.0)
    x = torch.randn(2, 5 * 6, dim)
    q, k, v = (getattr(attn, f"proj_{n}")(x).reshape(2, 30, heads, dim // heads).transpose(1, 2) for n in "qkv")
    a = (q @ k.transpose(-1, -2) * dim ** -0.5).softmax(-1) @ v
    want = attn.proj(a.transpose(1, 2).reshape(2, 30, dim))
    torch.testing.assert_close(attn(x, (5, 6)), want, rtol=1e-5, atol=1e-6)


def test_features_are_tokens_and_stage_maps_drop_the_class_token():
    model = convscope.create_model("cvt_13_224").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        final, maps = model.forward_intermediates(x)
        logits = model(x)
    assert model.traits.features_fmt == "NLC" and feats.shape == (1, 1 + 4 * 6, 384)
    assert [m.shape for m in maps] == [(1, 64, 16, 24), (1, 192, 8, 12), (1, 384, 4, 6)]
    torch.testing.assert_close(maps[-1].flatten(2).transpose(1, 2), feats[:, 1:])
    torch.testing.assert_close(model.forward_head(final), logits)


def test_transformers_source_needs_a_converter():
    model = convscope.create_model("convnext_atto")
    with pytest.raises(ValueError, match="no transformers-checkpoint converter"):
        load_checkpoint(model, model.state_dict(), source="transformers")
