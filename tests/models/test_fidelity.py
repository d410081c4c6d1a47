"""Fidelity to the papers: parameter counts against the official tables, logits against timm."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import convscope
from convscope.models import list_models, load_checkpoint, model_card

from ..conftest import meta_param_count, rel_err, timm_random_model

# timm parity runs at 224 and at a non-square size for variants up to this size; larger ones (the same
# code with more blocks and channels) are compared at a small non-square input, which costs a few seconds.
PARITY_FULL_CAP_M = 100


@pytest.mark.parametrize("name", list_models())
def test_param_count_matches_official(name):
    card = model_card(name)
    trainable, frozen = meta_param_count(name)
    assert trainable / 1e6 == pytest.approx(card.params_m, rel=0.005), (trainable, card.params_m)
    # frozen counts (RandFormer's random matrices) are published to one decimal ("11.9M + 0.2M")
    assert frozen / 1e6 == pytest.approx(card.frozen_params_m, abs=0.05), (frozen, card.frozen_params_m)


TIMM_MODELS = [n for n in list_models() if model_card(n).timm_name]


def _official_logits(name: str, theirs: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's logits, corrected where timm's port departs from the official code (which we follow).

    - PoolFormer v1: the official head applies its GroupNorm to the map before pooling; timm pools first and
      uses LayerNorm. The reference is rebuilt from timm's trunk and head weights in the official order.
    - ConvFormer / CAFormer: the official MLP head's LayerNorm has eps 1e-5 (nn.LayerNorm's default); timm 1e-6.
    """
    family = model_card(name).family
    if family == "poolformer":
        head = theirs.head
        feats = F.group_norm(theirs.forward_features(x), 1, head.norm.weight, head.norm.bias, eps=1e-5)
        return head.fc(feats.mean((2, 3)))
    if family in ("convformer", "caformer"):
        theirs.head.fc.norm.eps = 1e-5
    return theirs(x)


# timm's ConViT builds its gated positional attention for square token grids only: its other size is square.
_OTHER_SIZE = {"convit": (256, 256)}
# HaloNets take multiples of 256 only (8x8 halo blocks on the stride-32 map) and default to 256.
_SIZES = {"halonet": [(256, 256), (256, 512)]}


def _parity_sizes(name):
    card = model_card(name)
    if card.family in _SIZES:
        return _SIZES[card.family]
    small = card.params_m > PARITY_FULL_CAP_M
    if card.family == "crossvit":  # sides multiples of 120 (204 for the 408 models): the default and half of it
        h = card.input_size[1]
        return [(h // 2, h)] if small else [(h, h), (h // 2, h)]
    other = _OTHER_SIZE.get(card.family, (192, 256))
    return [(64, 96) if other[0] != other[1] else (64, 64)] if small else [(224, 224), other]


def _timm_at_size(timm, name: str, theirs: torch.nn.Module, size: tuple[int, int]) -> torch.nn.Module:
    """timm's model for an input size: itself where it takes any size; for the token models whose timm builds are
    fixed-size (CrossViT: resized to the built branch sizes) (a position embedding for one grid, a size check in the
    patch embedding), timm's model built for
    `size` holding the same weights with the position embedding resampled by timm's own resampling function
    (bicubic, antialiased), which is what ours does at run time."""
    family = model_card(name).family
    if family not in ("volo", "convit", "crossvit") or tuple(size) == tuple(theirs.pretrained_cfg["input_size"][1:]):
        return theirs
    from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc
    sd = dict(theirs.state_dict())
    ref = timm.create_model(model_card(name).timm_name, img_size=size, device="meta")
    if family == "crossvit":  # timm resizes any input to the branch sizes it was built for: build it for `size`
        for b, (old, new) in enumerate(zip(theirs.patch_embed, ref.patch_embed, strict=False)):
            sd[f"pos_embed_{b}"] = resample_abs_pos_embed(
                sd[f"pos_embed_{b}"], [new.img_size[0] // new.patch_size[0], new.img_size[1] // new.patch_size[1]],
                old_size=[old.img_size[0] // old.patch_size[0], old.img_size[1] // old.patch_size[1]])
    elif family == "volo":
        sd["pos_embed"] = resample_abs_pos_embed_nhwc(sd["pos_embed"], [size[0] // 16, size[1] // 16])
    else:
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], [size[0] // 16, size[1] // 16], num_prefix_tokens=0)
    ref = ref.to_empty(device="cpu")
    ref.load_state_dict(sd, strict=False)  # non-persistent buffers (ConViT's relative indices) are rebuilt below
    for m in ref.modules():
        if hasattr(m, "init_non_persistent_buffers"):
            m.init_non_persistent_buffers()
    return ref.eval()


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_logits_match_timm(name, timm):
    card = model_card(name)
    # Both sides are built on the meta device: timm's is materialised with random values (no costly init),
    # ours takes those tensors through load_checkpoint.
    theirs = timm_random_model(timm, card.timm_name)
    with torch.device("meta"):
        ours = convscope.create_model(name)
    load_checkpoint(ours, theirs.state_dict(), source="timm")
    ours.eval()
    assert not any(t.is_meta for t in ours.state_dict().values())
    g = torch.Generator().manual_seed(0)
    for h, w in _parity_sizes(name):
        if ours.traits.fixed_input_size is not None:
            h, w = ours.traits.fixed_input_size
        x = torch.randn(2, 3, h, w, generator=g)
        ref = theirs
        if getattr(ours, "partition_follows_input", False):
            # timm fixes MaxViT's window / grid when it builds the model; set_input_size gives it the partition
            # (and resampled bias tables) that ours takes from the input
            ref = copy.deepcopy(theirs)
            ref.set_input_size(img_size=(h, w))
        with torch.no_grad():
            want, got = _official_logits(name, _timm_at_size(timm, name, ref, (h, w)), x), ours(x)
        assert got.shape == want.shape
        assert want.abs().max() > 1e-3  # randomised weights give non-trivial logits
        assert rel_err(got, want) < 1e-5, (h, w, rel_err(got, want))


def test_randomised_vectors_take_both_signs():
    """A strictly positive draw for norm weights and layer scales would hide a sign error (|gamma|)."""
    from ..conftest import random_model
    m = random_model("inception_next_atto")
    gammas = torch.cat([b.gamma for s in m.stages for b in s.blocks])
    assert (gammas < -0.4).any() and (gammas > 0.4).any() and (gammas.abs() >= 0.5).all()
