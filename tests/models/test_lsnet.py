"""LSNet specifics: the official attention-bias table layout, smaller maps taking their offsets' biases, the
input-size constraint, img_size, the deploy form, and counting."""
from __future__ import annotations

import itertools

import pytest
import torch

import convscope
from convscope.analysis import count
from convscope.models.lsnet import LeViTAttention, LSNet, lsnet_condition_, stage4_size

from ..conftest import randomize_, rel_err


def _tiny(**kw) -> LSNet:
    return LSNet(embed_dim=(16, 32, 48, 64), depth=(1, 2, 2, 2), num_heads=(1, 1, 1, 2), **kw)


def test_bias_index_is_the_official_enumeration():
    """The official code numbers (|dy|, |dx|) offsets in order of first appearance over position pairs."""
    r = 4
    points = list(itertools.product(range(r), range(r)))
    offsets, idxs = {}, []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    attn = LeViTAttention(32, 16, 2, 1.0, (r, r))
    attn.attention_biases.data = torch.arange(2 * r * r, dtype=torch.float32).view(2, r * r)
    assert torch.equal(attn.bias(r, r)[0].long(), torch.tensor(idxs).view(r * r, r * r))


def test_smaller_map_takes_its_offsets_biases():
    attn = LeViTAttention(32, 16, 2, 1.0, (4, 4))
    torch.nn.init.normal_(attn.attention_biases)
    b = attn.bias(3, 2)
    pos = [(y, x) for y in range(3) for x in range(2)]
    for i, (y1, x1) in enumerate(pos):
        for j, (y2, x2) in enumerate(pos):
            assert torch.equal(b[:, i, j], attn.attention_biases[:, abs(y1 - y2) * 4 + abs(x1 - x2)])


def test_input_sizes():
    m = _tiny().eval()
    assert m.attn_resolution == (4, 4) == stage4_size(224, 224)
    with torch.no_grad():
        for h, w in [(224, 224), (256, 200), (65, 96), (96, 130)]:
            assert m(torch.randn(1, 3, h, w)).shape == (1, 1000)
    with pytest.raises(ValueError, match=r"stage-4 attention biases cover maps up to 4x4.*img_size"):
        m(torch.randn(1, 3, 257, 224))
    with pytest.raises(ValueError, match="at least 65x65"):
        m(torch.randn(1, 3, 64, 96))


def test_img_size_sizes_the_bias_table():
    m = _tiny(img_size=(320, 192)).eval()
    assert m.attn_resolution == (5, 3)
    assert m.stages[3].blocks[1].mixer.attention_biases.shape == (2, 15)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 320, 192)).shape == (1, 1000)
    arch = convscope.models.model_arch("lsnet_t")
    spec = convscope.models.family_of("lsnet_t").spec
    assert spec.rebuild(arch, arch["depth"], arch["embed_dim"], (288, 288))["img_size"] == (288, 288)


def test_deploy_form_equals_train_form_and_keeps_structure():
    m = lsnet_condition_(randomize_(_tiny(), seed=1)).eval()
    x = torch.randn(2, 3, 96, 72)
    d = convscope.reparameterize_model(m)
    with torch.no_grad():
        assert rel_err(d(x), m(x)) < 1e-5
    assert not any(isinstance(mod, torch.nn.BatchNorm1d) for mod in d.modules())
    # the BN after SKA stays (as in the official deploy form); every conv-BN and the RepVGG branches are folded
    bns = [n for n, mod in d.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and all(n.endswith("mixer.bn") for n in bns)


def test_counted_without_uncounted_ops():
    assert count("lsnet_t").uncounted == {}


def test_zero_init_last_is_the_official_init():
    m = _tiny(zero_init_last=True)
    assert (m.stages[0].blocks[0].ffn.pw2.bn.weight == 0).all()
    assert (m.stages[3].blocks[1].mixer.proj[1].bn.weight == 0).all()
    assert (_tiny().stages[0].blocks[0].ffn.pw2.bn.weight == 1).all()


def test_distilled_heads_mean_in_eval_pair_on_request():
    m = lsnet_condition_(randomize_(_tiny(distilled=True, num_classes=5), seed=2)).eval()
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        feats = m.forward_features(x)
        a, b = m.head(feats), m.head_dist(feats)
        assert rel_err(m(x), (a + b) / 2) < 1e-6 and rel_err(a, b) > 1e-2  # two different heads, averaged
        m.train()
        assert isinstance(m(x), torch.Tensor)  # the mean in training too, unless asked for the pair
        m.set_distilled_training(True)
        pair = m(x)
        assert isinstance(pair, tuple) and len(pair) == 2 and pair[0].shape == (2, 5)
        m.eval()
        assert isinstance(m(x), torch.Tensor)  # evaluation always averages, as the official model does
    with pytest.raises(ValueError, match="distilled=True"):
        _tiny().set_distilled_training(True)
    m.reset_classifier(3)
    assert m.head_dist.fc.out_features == 3
    m.prune_intermediate_layers(1)
    assert m.head_dist is None


def test_distilled_deploy_form_folds_both_heads():
    m = lsnet_condition_(randomize_(_tiny(distilled=True), seed=3)).eval()
    x = torch.randn(2, 3, 96, 72)
    d = convscope.reparameterize_model(m)
    with torch.no_grad():
        assert rel_err(d(x), m(x)) < 1e-5
    assert not any(isinstance(mod, torch.nn.BatchNorm1d) for mod in d.modules())


def test_converter_maps_the_distillation_head():
    from convscope.models.lsnet import convert_official
    sd = {"head_dist.bn.weight": torch.ones(4), "head_dist.l.weight": torch.ones(2, 4), "head.l.bias": torch.ones(2)}
    assert set(convert_official(sd, None)) == {"head_dist.norm.weight", "head_dist.fc.weight", "head.fc.bias"}
