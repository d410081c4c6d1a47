"""GLNet / GLMix: the mixer against a direct re-derivation of the paper's equations, sizes, the official-key
converter's layer-scale reshaping."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import convscope
from convscope.layers import MIXERS
from convscope.layers.mixers.glmix import GLMix

from ..conftest import randomize_, rel_err


def _ref_glmix(m: GLMix, x: torch.Tensor, slots0: torch.Tensor) -> torch.Tensor:
    """One image, explicit loops over slots and heads: cosine-similarity logits, soft clustering (softmax over
    positions), per-head softmax attention among the slots, soft dispatch (softmax over slots), plus the conv."""
    C, H, W = x.shape
    X = x.reshape(C, H * W).T                                    # (L, C)
    S = slots0.shape[0]
    logits = torch.empty(S, H * W, dtype=x.dtype)
    for s in range(S):
        a = slots0[s] / slots0[s].norm().clamp_min(1e-12)
        for t in range(H * W):
            logits[s, t] = m.slot_scale * (a @ (X[t] / X[t].norm().clamp_min(1e-12)))
    slots = torch.stack([(torch.exp(logits[s] - logits[s].max()) / torch.exp(logits[s] - logits[s].max()).sum())
                         @ X for s in range(S)])
    mha = m.relation_mha
    nh, hd = mha.num_heads, C // mha.num_heads
    Wq, Wk, Wv = mha.in_proj_weight.split(C)
    bq, bk, bv = mha.in_proj_bias.split(C)
    q, k, v = slots @ Wq.T + bq, slots @ Wk.T + bk, slots @ Wv.T + bv
    heads = []
    for h in range(nh):
        sl = slice(h * hd, (h + 1) * hd)
        att = torch.softmax(q[:, sl] @ k[:, sl].T / hd ** 0.5, -1)
        heads.append(att @ v[:, sl])
    slots = torch.cat(heads, -1) @ mha.out_proj.weight.T + mha.out_proj.bias
    out = torch.softmax(logits.T, -1) @ slots                   # (L, C)
    local = m.feature_conv(x[None])[0]
    return out.T.reshape(C, H, W) + local


@pytest.mark.parametrize("slot_init,hw", [("ada_avgpool", (6, 5)), ("param", (4, 4))])
def test_glmix_matches_reference(slot_init, hw):
    m = randomize_(GLMix(64, 2, num_slots=4, slot_init=slot_init, local_kernel_size=3)).double().eval()
    with torch.no_grad():
        m.slot_scale.fill_(-3.0 if slot_init == "param" else 2.5)  # both signs of the learnt temperature
    x = torch.randn(2, 64, *hw, dtype=torch.float64)
    with torch.no_grad():
        got = m(x)
        want = torch.stack([_ref_glmix(m, xi, m.init_slots[0] if m.init_slots is not None else
                                       F.adaptive_avg_pool2d(xi[None], 2)[0].flatten(1).T) for xi in x])
    assert rel_err(got, want) < 1e-10


def test_glmix_is_a_registered_mixer():
    assert MIXERS["glmix"] is GLMix
    x = torch.randn(1, 64, 7, 7)
    assert GLMix(64)(x).shape == x.shape
    with pytest.raises(ValueError, match="square num_slots"):
        GLMix(64, num_slots=10)


def test_sizes_and_input_constraint():
    torch.manual_seed(0)
    m = convscope.create_model("glnet_4g", num_classes=3).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 70, 45)).shape == (1, 3)       # overlapping stem: any size
    stl = convscope.create_model("glnet_stl", num_classes=3).eval()
    with pytest.raises(ValueError, match="multiples of 32; got 70x64"):
        stl(torch.randn(1, 3, 70, 64))


def test_converter_reshapes_layer_scale():
    from convscope.models.glnet import convert_official
    sd = {"stages.2.blocks.0.ls1.gamma": torch.ones(1, 8, 1, 1), "stages.3.blocks.1.ls1.gamma": torch.ones(8),
          "downsample_layers.0.1.weight": torch.ones(1), "stages.0.blocks.0.relation_mha.in_proj_bias": torch.ones(1),
          "norm.running_mean": torch.ones(1), "head.weight": torch.ones(1)}
    out = convert_official(sd, None)
    assert set(out) == {"stages.2.blocks.0.gamma1", "stages.3.blocks.1.gamma1", "stem.1.weight",
                        "stages.0.blocks.0.token_mixer.relation_mha.in_proj_bias", "norm_pre.running_mean",
                        "head.fc.weight"}
    assert out["stages.2.blocks.0.gamma1"].shape == (8,)


def _tklb_small(**kw):
    return convscope.create_model("glnet_4g_tklb", depths=(1, 1, 2, 1), num_classes=7, **kw)


def test_token_labelling_head_output_is_cls_plus_half_max_of_aux():
    m = randomize_(_tklb_small(), seed=2).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = m.forward_features(x)                        # (2, 512, 2, 3)
        tokens = feats.flatten(2).transpose(1, 2)            # (2, 6, 512)
        cls = tokens.mean(1) @ m.head.fc.weight.T + m.head.fc.bias
        aux = tokens @ m.aux_head.weight.T + m.aux_head.bias  # (2, 6, 7)
        want = cls + 0.5 * aux.max(1).values
        got = m(x)
        dense_cls, dense_aux = m.forward_dense(x)
    assert rel_err(got, want) < 1e-6
    assert dense_aux.shape == (2, 6, 7) and rel_err(dense_aux, aux) < 1e-6 and rel_err(dense_cls, cls) < 1e-6
    assert torch.equal(m.forward_head(feats, pre_logits=True), tokens.mean(1))
    plain = convscope.create_model("glnet_4g", depths=(1, 1, 2, 1), num_classes=7)
    assert plain.aux_head is None
    with pytest.raises(ValueError, match="use_aux_head=True"):
        plain.forward_dense(x)


def test_token_labelling_head_follows_reset_and_pruning():
    m = _tklb_small()
    m.reset_classifier(3)
    assert m.aux_head.out_features == 3
    m.reset_classifier(0)
    assert m.aux_head is None
    m = _tklb_small()
    m.prune_intermediate_layers(2)
    assert m.aux_head is None


def test_converter_maps_the_token_labelling_head():
    from convscope.models.glnet import convert_official
    out = convert_official({"tklb_aux_head.weight": torch.ones(2, 4), "tklb_aux_head.bias": torch.ones(2)}, None)
    assert set(out) == {"aux_head.weight", "aux_head.bias"}
