"""group_matcher / no_weight_decay (timm's contract) on the smallest variant of every family, and the layer ids and
layer-decay lr scales the recipe derives from them, against timm's own functions."""
from __future__ import annotations

import re

import pytest
import torch

from convscope.models import create_model, list_families, list_models
from convscope.train.recipe import layer_ids, param_groups


def _smallest(family: str) -> str:
    with torch.device("meta"):
        sizes = {n: sum(p.numel() for p in create_model(n).parameters()) for n in list_models(family=family)}
    return min(sizes, key=sizes.get)


SMALLEST = [_smallest(f) for f in list_families()]


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name)


@pytest.mark.parametrize("name", SMALLEST)
def test_groups_cover_every_parameter_once_in_depth_order(name, timm):
    from timm.models import group_parameters

    model = _meta(name)
    names = [n for n, _ in model.named_parameters()]
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        flat = [n for g in groups.values() for n in g]
        assert sorted(flat) == sorted(names)                        # every parameter in exactly one group
    ids, head = layer_ids(model)
    assert ids == {n: lid for lid, g in group_parameters(model, model.group_matcher()).items() for n in g}
    stem = [n for n in names if n.startswith(("stem.", "patch_embed.", "stages.0.patch_embed."))]
    assert stem and all(ids[n] == 0 for n in stem)                  # the stem is group 0
    assert head and all(ids[n] == max(ids.values()) for n in head)  # the head last
    assert all(n.startswith(("head.", "aux_head.")) for n in head)
    depth = [ids[n] for n in names if n not in head]
    units = [n for n in names if re.match(r"^(stages\.\d+\.blocks|stages\.\d+\.\d+|blocks|network)\.\d+", n)]
    order = [tuple(int(x) for x in re.findall(r"\.(\d+)", n)[:2]) for n in units]
    assert [ids[n] for _, n in sorted(zip(order, units, strict=True))] == sorted(ids[n] for n in units)
    assert max(depth) >= len(model.feature_info)                    # at least a group per stage


@pytest.mark.parametrize("name", SMALLEST)
def test_no_weight_decay_names_existing_tables(name):
    model = _meta(name)
    params = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd <= set(params)
    assert all(re.search(r"(pos_embed|cls_token|relative|learnable|_rel|attention_biases)", n) for n in nwd)


def test_no_weight_decay_values():
    assert _meta("convit_tiny").no_weight_decay() == {"pos_embed", "cls_token"}
    assert _meta("convnext_atto").no_weight_decay() == set()
    maxvit = _meta("maxvit_tiny_tf_224").no_weight_decay()
    assert maxvit and all(n.endswith("relative_position_bias_table") for n in maxvit)


# timm's VOLO has one matcher for both; ours, coarse, has a group per unit: only the fine ones are compared
TIMM_SAME = ("convnext_atto", "convnextv2_atto", "inception_next_atto", "convit_tiny")


@pytest.mark.parametrize(("name", "coarse"), [(n, c) for n in TIMM_SAME for c in (0, 1)] + [("volo_d1_224", 0)])
def test_groups_equal_timms(name, coarse, timm):
    """The same parameters in the same groups as timm's group_matcher gives for timm's model of that name."""
    from timm.models import group_parameters

    ours = _meta(name)
    theirs = timm.create_model(name, pretrained=False, device="meta")
    assert set(dict(ours.named_parameters())) == set(dict(theirs.named_parameters()))
    got = group_parameters(ours, ours.group_matcher(coarse=coarse))
    want = group_parameters(theirs, theirs.group_matcher(coarse=coarse))
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}


@pytest.mark.parametrize("name", ["convnext_atto", "convit_tiny"])
def test_layer_decay_scales_equal_timms(name, timm):
    from timm.optim import param_groups_layer_decay

    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    theirs = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=0.8)
    ours = param_groups(model, 0.05, layer_decay=0.8)
    ids = {id(p): n for n, p in model.named_parameters()}

    def scales(groups):
        return {ids[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}

    assert scales(ours) == scales(theirs)
    assert len(ours) == len(theirs)
    ids_, head = layer_ids(model)
    num_layers = max(ids_.values()) + 1
    assert num_layers > 5 and {s for s, _ in scales(ours).values()} == {0.8 ** i for i in range(num_layers)}
    scaled = scales(param_groups(model, 0.05, layer_decay=0.8, head_lr_scale=10.0))
    assert {n for n, (s, _) in scaled.items() if s == 10.0} == head == {n for n in ids.values() if n.startswith("head")}


def test_without_layer_decay_two_groups_no_scale():
    model = create_model("convnext_atto", num_classes=3)
    groups = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and all("lr_scale" not in g for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
