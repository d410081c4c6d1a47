"""Structured pruning over the registry: masked and slimmed forms give equal outputs, the slimmed model is smaller by
exactly the removed slices, and save_pruned / load_pruned rebuild it exactly through create_model and the spec.
Scopes: MLP hidden channels (with depthwise / grouped convs, BatchNorm, SE inside), attention heads, stage widths."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import convscope
from convscope.deploy.export import cheap_random_model
from convscope.deploy.prune import (
    SCOPES,
    apply_spec_,
    head_groups,
    hidden_groups,
    load_pruned,
    mask_,
    plan_pruning,
    prunable_groups,
    pruning_spec,
    save_pruned,
    slim_,
    stage_groups,
    taylor_scores,
)

from ..conftest import input_size_for, meta_model, randomize_, rel_err
from .zoo import smallest_per_family

PRUNABLE = [n for n in smallest_per_family() if hidden_groups(meta_model(n))]
# the families the issue names must be among them, with the scopes it asks for
ISSUE = {"convnext_atto": ("mlp", "stage"), "inception_next_atto": ("mlp", "stage"),
         "caformer_s18": ("mlp", "heads"), "unireplknet_a": ("mlp", "stage")}
assert set(ISSUE) <= set(PRUNABLE), PRUNABLE


def _n(m):
    return sum(p.numel() for p in m.parameters())


def _scopes(model):
    return tuple(s for s in SCOPES if prunable_groups(model, [s]))


def _widths(model, scopes):
    return {(g.kind, g.path): g.size(model) for g in prunable_groups(model, scopes)}


@pytest.mark.parametrize("name", PRUNABLE)
def test_masked_equals_slimmed_and_rebuilds(name, tmp_path):
    model = randomize_(cheap_random_model(name, seed=4), seed=4).eval()
    scopes = _scopes(model)
    if name in ISSUE:
        assert scopes == ISSUE[name]
    t = model.traits
    h, w = (32, 32) if t.fixed_input_size is None and max(t.min_input_size) <= 32 else input_size_for(model)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    plan = plan_pruning(model, 0.3, scopes=scopes, quantum=1)
    masked = mask_(copy.deepcopy(model), plan)
    slim = slim_(copy.deepcopy(masked), plan)
    with torch.no_grad():
        a, b, orig = masked(x), slim(x), model(x)
        if name in ISSUE:  # slimming the unmasked model gives the same network
            assert rel_err(slim_(copy.deepcopy(model), plan)(x), a) < 1e-5
    assert rel_err(b, a) < 1e-5
    assert rel_err(a, orig) > 1e-4  # the mask changed something: units really were removed
    for scope in scopes:
        pairs = [(g, k) for g, k in zip(plan.groups, plan.keep, strict=False) if g.kind == scope]
        kept = sum(len(k) for _, k in pairs)
        full = sum(g.size(model) for g, _ in pairs)
        if scope == "heads":  # few heads per attention and at least one kept: about the budget
            assert 0 < full - kept and abs(1 - kept / full - 0.3) < 0.15, (kept, full)
        else:
            assert abs(1 - kept / full - 0.3) < 0.02, (scope, kept, full)
    assert _n(slim) < _n(model)
    assert _widths(slim, scopes) == {(g.kind, g.path): len(k) for g, k in zip(plan.groups, plan.keep, strict=False)}
    path = save_pruned(slim, pruning_spec(slim, name), tmp_path / "pruned.safetensors")
    rebuilt = load_pruned(path)
    assert _widths(rebuilt, scopes) == _widths(slim, scopes)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), b)


def _convnext_params(widths, hidden, num_classes):
    """ConvNeXt with 1x1-conv MLPs (atto), counted by hand: stage widths, per-block hidden widths."""
    c0 = widths[0]
    n = 3 * 16 * c0 + c0 + 2 * c0  # stem conv + LN2d
    for i, c in enumerate(widths):
        if i:
            p = widths[i - 1]
            n += 2 * p + 4 * p * c + c  # LN2d + 2x2 conv
        for h in hidden[i]:
            n += 49 * c + c + 2 * c + (c * h + h) + (h * c + c) + c  # dw, LN, fc1, fc2, gamma
    return n + 2 * widths[-1] + widths[-1] * num_classes + num_classes


def test_convnext_shrinks_by_the_removed_slices():
    model = cheap_random_model("convnext_atto", seed=1)
    depths = [len(s.blocks) for s in model.stages]

    def counted(m):
        widths = [s.blocks[0].conv_dw.out_channels for s in m.stages]
        return _convnext_params(widths, [[b.mlp.fc1.out_channels for b in s.blocks] for s in m.stages], 1000)
    assert counted(model) == _n(model) == 3_695_520  # the card's 3.70M
    plan = plan_pruning(model, 0.4, scopes=("mlp", "stage"), stage_ratio=0.25, quantum=8)
    slim = slim_(copy.deepcopy(model), plan)
    widths = {g.path: len(k) for g, k in zip(plan.groups, plan.keep, strict=False)}
    stage_w = [widths[f"stages.{i}"] for i in range(4)]
    hidden = [[widths[f"stages.{i}.blocks.{j}.mlp"] for j in range(depths[i])] for i in range(4)]
    assert all(h % 8 == 0 for hs in hidden for h in hs) and all(w % 8 == 0 for w in stage_w)
    assert _n(slim) == _convnext_params(stage_w, hidden, 1000) < 0.7 * _n(model)
    assert abs(1 - sum(stage_w) / 600 - 0.25) < 0.03


def test_caformer_heads_and_sepconv_shrink_by_the_removed_slices():
    model = cheap_random_model("caformer_s18", seed=2)
    plan = plan_pruning(model, 0.25, scopes=("mlp", "heads"), head_ratio=0.5, quantum=1)
    expected = 0
    for g, keep in zip(plan.groups, plan.keep, strict=False):
        r = g.size(model) - len(keep)
        mod = model.get_submodule(g.path)
        if g.kind == "heads":  # no biases in CAFormer's attention: 3 rows of q, k, v and a proj column per channel
            c = mod.qkv.in_features
            expected += r * 4 * mod.head_dim * c
        elif hasattr(mod, "dwconv"):  # SepConv: expand row, 7x7 depthwise filter, project column, no biases;
            c = mod.pwconv1.in_channels  # the masked dw conv gives 0, so no bias is added
            expected += r * (2 * c + 49)
        else:  # the MLP (no biases): StarReLU's bias of the removed channels is folded into a new fc2 bias
            c = mod.fc1.weight.shape[1]
            expected += r * 2 * c - (c if r else 0)
    heads = [(len(k), g.size(model)) for g, k in zip(plan.groups, plan.keep, strict=False) if g.kind == "heads"]
    assert sum(k for k, _ in heads) == round(0.5 * sum(n for _, n in heads))
    slim = slim_(copy.deepcopy(model), plan)
    assert _n(model) - _n(slim) == expected > 0
    for g, keep in zip(plan.groups, plan.keep, strict=False):
        if g.kind == "heads":
            att = slim.get_submodule(g.path)
            assert att.num_heads == len(keep) and att.head_dim == 32 and att.attn_dim == 32 * len(keep)


class _GroupedInverted(nn.Module):
    """1x1 expand -> BN -> GELU -> grouped 3x3 (4 channels a group) -> BN -> GELU -> SE -> 1x1 project."""
    prune_hidden = ("expand", ("bn1", "act", "conv", "bn2", "act", "se"), "project")

    def __init__(self, act=nn.GELU):
        super().__init__()
        from convscope.layers import SqueezeExcite
        self.expand = nn.Conv2d(8, 32, 1)
        self.bn1, self.bn2 = nn.BatchNorm2d(32), nn.BatchNorm2d(32)
        self.act = act()
        self.conv = nn.Conv2d(32, 32, 3, padding=1, groups=8)
        self.se = SqueezeExcite(32, 6)
        self.project = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return x + self.project(self.se(self.act(self.bn2(self.conv(self.act(self.bn1(self.expand(x))))))))


def test_grouped_conv_loses_whole_groups():
    model = randomize_(nn.Sequential(_GroupedInverted(), _GroupedInverted()), seed=3).eval()
    groups = hidden_groups(model)
    assert [g.unit for g in groups] == [4, 4]
    plan = plan_pruning(model, 0.5, quantum=1)
    for keep in plan.keep:
        blocks = keep.view(-1, 4)
        assert torch.equal(blocks - blocks[:, :1], torch.arange(4).expand_as(blocks)) and blocks[:, 0].remainder(
            4).eq(0).all()
    assert sum(len(k) for k in plan.keep) == 32
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(0))
    masked = mask_(copy.deepcopy(model), plan)
    slim = slim_(copy.deepcopy(model), plan)
    with torch.no_grad():
        assert rel_err(slim(x), masked(x)) < 1e-5 and rel_err(masked(x), model(x)) > 1e-3
    for blk, keep in zip(slim, plan.keep, strict=False):
        assert blk.conv.groups == len(keep) // 4 and blk.se.fc1.in_channels == len(keep)
    # StarReLU may be non-zero at 0: an SE behind it would see the removed channels, so the group is not prunable
    from convscope.layers import StarReLU
    assert hidden_groups(_GroupedInverted(StarReLU)) == []


def test_length_scaled_attention_heads():
    from convscope.layers.mixers.aggregated_attention import relative_position_cpb
    from convscope.layers.mixers.length_scaled_attention import LengthScaledAttention
    att = randomize_(LengthScaledAttention(64, 4, (4, 4)), seed=5).eval()
    assert [(g.path, g.per_head) for g in head_groups(att)] == [("", ("temperature", "query_embedding", "cpb_fc2"))]
    index, table = relative_position_cpb((4, 4), (4, 4))
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1))
    plan = plan_pruning(att, 0.5, scopes=("heads",))
    masked, slim = mask_(copy.deepcopy(att), plan), slim_(copy.deepcopy(att), plan)
    with torch.no_grad():
        a, b = masked(x, 4, 4, index, table), slim(x, 4, 4, index, table)
    assert rel_err(b, a) < 1e-5 and rel_err(a, att(x, 4, 4, index, table)) > 1e-3
    assert slim.num_heads == 2 and slim.cpb_fc2.out_features == 2 and slim.query_embedding.shape == (2, 1, 16)


def test_inception_parts_stay_consistent():
    model = meta_model("inception_next_atto")
    (g0, *_) = stage_groups(model)
    assert g0.parts(model) == [(0, 10, False), (10, 10, True), (20, 10, True), (30, 10, True)]
    real = cheap_random_model("inception_next_atto", seed=6)
    g0 = stage_groups(real)[0]
    # the square-kernel part is the least important: it keeps only its best channel, the others keep theirs
    with torch.no_grad():  # every writer of channels 10-19: the stem conv, the blocks' fc2
        for layer in [real.stem[0]] + [b.mlp.fc2 for b in real.stages[0].blocks]:
            layer.weight[10:20] *= 1e-4
    plan = plan_pruning(real, 0.2, scopes=("stage",), quantum=1)
    keep = plan.keep[0]
    assert ((keep >= 10) & (keep < 20)).sum() == 1
    slim = slim_(copy.deepcopy(real), plan)
    mixers = [b.token_mixer for b in slim.stages[0].blocks]
    sizes = {m.split_sizes for m in mixers}
    assert len(sizes) == 1 and sum(next(iter(sizes))) == len(keep) and next(iter(sizes))[1] == 1
    assert all(m.dwconv_hw.out_channels == 1 and m.dwconv_w.groups == m.split_sizes[2] for m in mixers)
    assert pruning_spec(slim, "inception_next_atto")["stages"]["stages.0"]["parts"] == list(next(iter(sizes)))


def test_taylor_importance_and_quantum():
    torch.manual_seed(0)
    model = convscope.create_model("convnext_atto", num_classes=4)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(2)]
    plan = plan_pruning(model, 0.3, scopes=("mlp", "stage"), importance="taylor", loader=data, quantum=8)
    assert all(len(k) % 8 == 0 or len(k) == g.size(model) for g, k in zip(plan.groups, plan.keep, strict=False))
    mlp = [len(k) for g, k in zip(plan.groups, plan.keep, strict=False) if g.kind == "mlp"]
    stage = [len(k) / g.size(model) for g, k in zip(plan.groups, plan.keep, strict=False) if g.kind == "stage"]
    assert len(set(mlp)) > 1 and len(set(stage)) > 1  # a global budget: the widths differ per layer
    with pytest.raises(ValueError, match="needs a loader"):
        plan_pruning(model, 0.3, importance="taylor")


def test_taylor_heads():
    model = cheap_random_model("convit_tiny", seed=0)
    model.reset_classifier(3)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 3, (2,), generator=g))]
    groups = head_groups(model)
    scores = taylor_scores(model, groups, data)
    assert [s.shape for s in scores] == [(model.get_submodule(g.path).num_heads,) for g in groups]
    assert all(bool((s > 0).all()) for s in scores)
    plan = plan_pruning(model, 0.5, scopes=("heads",), importance="taylor", loader=data)
    assert sum(len(k) for k in plan.keep) == sum(g.size(model) for g in groups) // 2


def test_bad_budget_or_scope():
    model = meta_model("convnext_atto")
    with pytest.raises(ValueError, match="ratio must be in"):
        plan_pruning(model, 1.5)
    with pytest.raises(ValueError, match="stage_ratio must be in"):
        plan_pruning(model, 0.3, scopes=("stage",), stage_ratio=-0.1)
    with pytest.raises(ValueError, match="head_ratio must be in"):
        plan_pruning(model, 0.3, head_ratio=1.0)
    with pytest.raises(ValueError, match="scopes must be a non-empty subset of"):
        plan_pruning(model, 0.3, scopes=("channels",))
    with pytest.raises(ValueError, match="no prunable attention heads"):
        plan_pruning(model, 0.3, scopes=("mlp", "heads"))
    with pytest.raises(ValueError, match="no prunable stage channels"):
        plan_pruning(meta_model("caformer_s18"), 0.3, scopes=("stage",))
    with pytest.raises(ValueError, match="importance must be"):
        plan_pruning(model, 0.3, importance="random")
    with pytest.raises(ValueError, match="quantum must be"):
        plan_pruning(model, 0.3, quantum=0)
    spec = dict(model="convnext_atto", groups={}, heads={}, stages={"stages.7": dict(width=8)})
    with pytest.raises(ValueError, match="does not have as a prunable stage"):
        apply_spec_(copy.deepcopy(model), spec)


def test_load_pruned_rejects_plain_weights(tmp_path):
    from convscope.models import save_weights
    path = save_weights(convscope.create_model("convnext_atto", num_classes=3), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="no pruning spec"):
        load_pruned(path)


def test_cli_prune_then_optimize_source(tmp_path, capsys):
    from convscope.cli import main
    from convscope.models.source import load_source
    out = tmp_path / "p.safetensors"
    assert main(["prune", "convnext_atto", "--scopes", "mlp,stage", "--ratio", "0.3", "--stage-ratio", "0.25",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stage: kept" in text and "mlp: kept" in text and "parameters: 3.696M ->" in text
    model, src = load_source(str(out))  # what convscope optimize / deploy take
    assert src["pruned"] and src["chw"] == (3, 224, 224)
    assert sum(p.numel() for p in model.parameters()) < 0.8 * 3_695_520
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    for bad, msg in ((["--scopes", "mlp,bogus"], "argument --scopes:"), (["--ratio", "1.5"], "argument --ratio:"),
                     (["--importance", "taylor"], "needs --data"), (["--out", str(tmp_path)], "argument --out:"),
                     (["--scopes", "heads"], "no prunable attention heads"),
                     (["--out", str(tmp_path / "x.safetensors" / "y.safetensors")], "is a file, not a directory")):
        default_out = [] if "--out" in bad else ["--out", str(tmp_path / "x.safetensors")]
        if "is a file" in msg:
            (tmp_path / "x.safetensors").write_text("a file in the way\n")
        assert main(["prune", "convnext_atto", *bad, *default_out]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
        if "is a file" in msg:
            assert (tmp_path / "x.safetensors").read_text() == "a file in the way\n"
            (tmp_path / "x.safetensors").unlink()
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["prune", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint at" in err and len(err.strip().splitlines()) == 1, err
