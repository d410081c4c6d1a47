"""`reparameterize_model` and `create_model(..., deploy=True)` on every registered variant that has anything to
merge or fold: equal outputs, no BatchNorm beside a conv and no parallel branches left, the parameter count the
single-kernel design implies, idempotence, and deployed checkpoints that load strictly."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import convscope
from convscope.deploy import reparameterize_
from convscope.layers import ConvBnAct, ParallelConvBn
from convscope.layers.mixers.bottleneck_attention import BottleneckAttention
from convscope.layers.mixers.conv_attention import ConvProjectionAttention
from convscope.models import load_checkpoint, model_card, save_weights
from convscope.models.halonet import HaloBlock
from convscope.models.inception_next import MetaNeXtBlock
from convscope.models.lsnet import LSNetHead, RepVGGDW, lsnet_condition_
from convscope.models.moat import MOATBlock
from convscope.models.replknet import ConvFFN, RepLKBlock
from convscope.models.rmt import RMTHead, RMTStage
from convscope.models.unireplknet import UniRepLKNetBlock

from ..conftest import contract_models, meta_model, random_model, rel_err, reparameterizable_models
from .zoo import unfoldable

MODELS = reparameterizable_models()
# Models up to this size are compared through reparameterize_model (a copy); larger ones are re-parameterised in
# place after the reference output is taken, to keep memory low.
COPY_CAP = 60e6
_BN = nn.modules.batchnorm._BatchNorm


def _x(batch: int = 2, h: int = 32, w: int = 64, seed: int = 0, model: nn.Module | None = None) -> torch.Tensor:
    if model is not None:  # at least the model's minimum (LSNet: 65x65), or its only size
        mh, mw = model.traits.min_input_size
        h, w = model.traits.fixed_input_size or (max(h, mh), max(w, mw))
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _well_conditioned(model: nn.Module) -> nn.Module:
    """randomize_ gives layer scales U(0.5, 1.5), 1e6 times their init; 27 such UniRepLKNet blocks make a chaotic
    network whose own float32 and float64 outputs differ by up to 90%, which would hide any re-parameterisation
    error. Scaled by 0.1 (float32 then agrees with float64 to ~1e-6), the comparison means something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "gamma", None), nn.Parameter):
                m.gamma.mul_(0.1)
    return lsnet_condition_(model)  # LSNet has no layer scale: its residual branches end in conv-BN


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- what the deploy form should look like, traced from a forward pass ---------------------------------------------
def _key(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t.numel()  # a view (permute) of a tensor has the same key


def _unpadded(m: nn.Module) -> bool:  # (a BatchNorm before a transposed conv is never folded)
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and all(p == 0 for p in m.padding))


def traced_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """model(x), and what a deploy form must not have: a BatchNorm reading a conv/linear output (through views
    only) or feeding an unpadded conv/linear, and two conv (or two linear) layers with outputs of one size reading
    the same tensor (parallel branches). Every traced tensor is kept alive, so equal data pointers mean the same
    memory."""
    calls: list[tuple[str, nn.Module, tuple, tuple]] = []
    keep: list[torch.Tensor] = []
    names = {m: n for n, m in model.named_modules()}

    shapes: dict[tuple[int, int], tuple[int, ...]] = {}

    def hook(mod, args, out):
        calls.append((names[mod], mod, _key(args[0]), _key(out)))
        shapes[_key(out)] = tuple(out.shape)
        keep.extend((args[0], out))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, _BN))]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    layers = [c for c in calls if not isinstance(c[1], _BN)]
    produced = {out: name for name, _, _, out in layers}
    consumers: dict[tuple, list[str]] = {}
    for name, _mod, inp, _ in layers:
        consumers.setdefault(inp, []).append(name)
    problems = []
    for name, mod, inp, out in calls:
        if isinstance(mod, _BN):
            if inp in produced:
                problems.append(f"{produced[inp]} -> {name} (BatchNorm after a conv)")
            unpadded = [c for c in consumers.get(out, []) if _unpadded(model.get_submodule(c))]
            if unpadded and isinstance(getattr(mod, "act", None) or nn.Identity(), nn.Identity):
                # (a BatchNorm-activation module's output is past its activation)
                problems.append(f"{name} -> {unpadded} (BatchNorm before an unpadded conv)")
    # parallel branches: layers of one kind with equal output shapes reading the same tensor (what could merge;
    # BiFormer's LePE conv and qkv Linear both read the normalised map, by design)
    mergeable: dict[tuple, list[str]] = {}
    for name, mod, inp, out in layers:
        mergeable.setdefault((inp, type(mod), shapes[out]), []).append(name)
    problems += [f"parallel branches {c}" for c in mergeable.values() if len(set(c)) > 1]
    return y, problems


# -- the parameter count of the single-kernel design, from the train form's module shapes ---------------------------
def _conv_site(convs: list[nn.Conv2d]) -> int:
    """One conv with a bias replacing parallel `convs`: the widest (dilated) extent over all of them."""
    c = convs[0]
    kh = max(m.dilation[0] * (m.kernel_size[0] - 1) + 1 for m in convs)
    kw = max(m.dilation[1] * (m.kernel_size[1] - 1) + 1 for m in convs)
    return c.out_channels * (c.in_channels // c.groups) * kh * kw + c.out_channels


def _convs(m: nn.Module) -> list[nn.Conv2d]:
    return [c for c in m.modules() if isinstance(c, nn.Conv2d)]


def _bias_gap(layer: nn.Module) -> int:
    out = layer.out_channels if isinstance(layer, nn.ConvTranspose2d) else layer.weight.shape[0]
    return 0 if layer.bias is not None else out


def _bn_params(*bns: nn.Module) -> int:
    return sum(_n(b) for b in bns)


def _halo_block(m: HaloBlock) -> int:
    """ConvBnAct units fold; the BatchNorm after bottleneck attention folds into its qkv (which gains a bias), the
    one after halo attention stays."""
    total = sum(expected_deploy_params(c) for n, c in m.named_children() if n not in ("self_attn", "post_attn"))
    if isinstance(getattr(m, "self_attn", None), BottleneckAttention):
        total += _n(m.self_attn) + _bias_gap(m.self_attn.qkv)
    elif hasattr(m, "self_attn"):
        total += _n(m.self_attn) + _n(m.post_attn)
    return total


RULES: list[tuple[type, callable]] = [
    (ConvBnAct, lambda m: _conv_site([m.conv])),
    (ParallelConvBn, lambda m: _conv_site(_convs(m))),
    # prelkb_bn / preffn_bn fold into pw1 (which already gains a bias from its own BN)
    (RepLKBlock, lambda m: expected_deploy_params(m.pw1) + expected_deploy_params(m.large_kernel)
     + expected_deploy_params(m.pw2)),
    (ConvFFN, lambda m: expected_deploy_params(m.pw1) + expected_deploy_params(m.pw2)),
    # BN -> dwconv site; GRN keeps gamma only; pwconv2 gains a bias (GRN beta, BN, layer scale fold into it)
    (UniRepLKNetBlock, lambda m: (_conv_site(_convs(m.dwconv)) if _convs(m.dwconv) else 0) + _n(m.se)
     + _n(m.pwconv1) + m.grn.weight.numel() + m.pwconv2.weight.numel() + m.pwconv2.out_features),
    # the BatchNorm folds into mlp.fc1
    (MetaNeXtBlock, lambda m: _n(m.token_mixer) + _n(m.mlp) + _bias_gap(m.mlp.fc1) + m.gamma.numel()),
    # dw 3x3 + dw 1x1 + identity -> one biased dw 3x3; the head's BatchNorm1d folds into its Linear
    (RepVGGDW, lambda m: _conv_site([m.conv.conv])),
    (LSNetHead, lambda m: m.fc.weight.numel() + m.fc.out_features if isinstance(m.fc, nn.Linear) else 0),
    # RMT: q, k, v projections of one input become one Linear(C, 3C); the head's BatchNorm folds into its proj
    (RMTStage, lambda m: expected_deploy_params(m.downsample) + _n(m.blocks)),
    (RMTHead, lambda m: _n(m.proj) + _bias_gap(m.proj) + _n(m.fc)),
    (HaloBlock, _halo_block),
    # pre-norm -> 1x1 expand conv, norm_expand and norm_dw after their convs: the two convs gain biases
    (MOATBlock, lambda m: _n(m) - _bn_params(m.pre_norm, m.norm_expand, m.norm_dw) + _bias_gap(m.conv_expand)
     + _bias_gap(m.conv_dw)),
    # each dw conv -> BN becomes a biased dw conv; k and v merge into one conv of the same size
    (ConvProjectionAttention, lambda m: sum(expected_deploy_params(c) for c in m.children())),
]


def expected_deploy_params(module: nn.Module) -> int:
    for cls, rule in RULES:
        if isinstance(module, cls):
            return rule(module)
    assert not callable(getattr(module, "reparameterize", None)), \
        f"no expected deploy form for {type(module).__name__}: add a rule to RULES"
    own = sum(p.numel() for p in module.parameters(recurse=False))
    children = [c for c in module.children() if not isinstance(c, nn.Identity)]
    if not (isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward):
        return own + sum(expected_deploy_params(c) for c in children)
    total = own
    for i, c in enumerate(children):  # a BatchNorm next to a conv/linear (before it: unpadded) disappears
        prev, nxt = (children[i - 1] if i else None), (children[i + 1] if i + 1 < len(children) else None)
        if isinstance(c, _BN) and isinstance(prev, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            total += _bias_gap(prev)
        elif isinstance(c, _BN) and isinstance(nxt, (nn.Conv2d, nn.Linear)) and _unpadded(nxt):
            total += _bias_gap(nxt)
        else:
            total += expected_deploy_params(c)
    return total


@pytest.mark.parametrize("name", MODELS)
def test_deploy_param_count_is_the_single_kernel_design(name):
    train = meta_model(name)
    with torch.device("meta"):
        deployed = convscope.create_model(name, deploy=True)
    got = _n(deployed)
    assert got == expected_deploy_params(train) < _n(train)
    card = model_card(name)
    if card.deploy_params_m is not None:  # the official deploy form, counted from the official code
        assert got == round(card.deploy_params_m * 1e6), (got, card.deploy_params_m)


# -- outputs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_deploy_form_matches_train_form(name):
    model = _well_conditioned(random_model(name, seed=1))
    x = _x(model=model)
    want, train_problems = traced_forward(model, x)
    assert train_problems, "the trace finds nothing to fold in the train form, so it cannot check the deploy form"
    if _n(model) <= COPY_CAP:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        deployed = convscope.reparameterize_model(model)
        assert not deployed.training and deployed is not model
        after = model.state_dict()
        assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    else:
        deployed = reparameterize_(model)
    got, problems = traced_forward(deployed, x)
    # a declared unfoldable BatchNorm (zoo.UNFOLDABLE, with its reason) may look foldable to the trace, which does
    # not see residual sums (WaveMix's stem BatchNorm feeds the first block's 1x1 conv and its shortcut)
    declared = [p for p, _ in unfoldable(name)]
    # BatchNorms a model folds in its own fold_batchnorm() (the fold step of prepare_for_inference, tested in
    # test_fold) are not re-parameterisation's: GLNet's final BatchNorm, which also feeds its token-labelling head
    declared += [re.escape(p) for p in getattr(deployed, "foldable_batchnorms", lambda: [])()]
    problems = [p for p in problems if not any(re.match(d + r"\b", p) for d in declared)]
    err = rel_err(got, want)
    assert err < 1e-5, err
    assert not problems, problems
    assert _n(deployed) == expected_deploy_params(meta_model(name))
    state = {k: v.clone() for k, v in deployed.state_dict().items()}
    reparameterize_(deployed)  # idempotent: nothing changes
    again = deployed.state_dict()
    assert list(again) == list(state) and all(torch.equal(again[k], v) for k, v in state.items())


def test_reparameterize_model_rejects_non_modules():
    with pytest.raises(ValueError, match="expects an nn.Module"):
        convscope.reparameterize_model({"weight": torch.zeros(1)})


# -- deployed checkpoints ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in contract_models() if n in MODELS])
def test_create_model_deploy_loads_deployed_and_train_checkpoints(name, tmp_path):
    model = _well_conditioned(random_model(name, seed=2))
    deployed = reparameterize_(copy.deepcopy(model))
    deploy_path = save_weights(deployed, tmp_path / "deploy.safetensors")
    train_path = save_weights(model, tmp_path / "train.safetensors")
    x = _x(batch=1, model=model)
    with torch.no_grad():
        want = deployed(x)
        for path in (deploy_path, train_path):  # strict loads; the train form is re-parameterised after loading
            with torch.device("meta"):
                loaded = convscope.create_model(name, deploy=True, pretrained=str(path))
            got = loaded.state_dict()
            assert list(got) == list(deployed.state_dict())
            if path == deploy_path:
                assert all(torch.equal(got[k], v) for k, v in deployed.state_dict().items())
            # (re-parameterising memory-mapped weights may take other SIMD paths: ~1 ulp)
            assert rel_err(loaded.eval()(x), want) < 1e-5
    with pytest.raises(ValueError, match="missing keys"):  # and a deployed checkpoint does not fit the train form
        convscope.create_model(name, pretrained=str(deploy_path))


DEPLOY_FIXTURES = sorted((Path(__file__).parents[1] / "data" / "official_keys_deploy").glob("*.json"))


@pytest.mark.parametrize("fixture", DEPLOY_FIXTURES, ids=[f.stem for f in DEPLOY_FIXTURES])
def test_official_deploy_state_dict_loads_into_deploy_form(fixture):
    """The official code's deploy forms (recorded by benchmarks/official_parity.py): keys and shapes load
    strictly, and what results is our deploy form. Meta tensors: the layout is what is checked here."""
    name = fixture.stem.split(".")[0]
    spec = json.loads(fixture.read_text())
    official = {k: torch.empty(shape, device="meta") for k, shape in spec["keys"].items()}
    with torch.device("meta"):
        model = convscope.create_model(name)
    load_checkpoint(model, official, source="official", match_reparam_form=True)  # strict
    reparameterize_(model)
    ours = {k: v.shape for k, v in reparameterize_(copy.deepcopy(meta_model(name))).state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == ours


@pytest.mark.parametrize("family", sorted({model_card(f.stem.split(".")[0]).family for f in DEPLOY_FIXTURES}))
def test_official_deploy_checkpoint_file_through_create_model(family, tmp_path):
    """The smallest official deploy fixture of a family, with a distinct value in every tensor, through
    create_model(deploy=True, pretrained=file)."""
    fixtures = [f for f in DEPLOY_FIXTURES if model_card(f.stem.split(".")[0]).family == family]
    size = lambda f: sum(torch.Size(s).numel() for s in json.loads(f.read_text())["keys"].values())  # noqa: E731
    fixture = min(fixtures, key=size)
    name = fixture.stem.split(".")[0]
    keys = json.loads(fixture.read_text())["keys"]
    official = {k: torch.full(shape, 1.0 + i / len(keys)) for i, (k, shape) in enumerate(keys.items())}
    path = save_weights(official, tmp_path / "official_deploy.safetensors")
    with torch.device("meta"):
        model = convscope.create_model(name, deploy=True, pretrained=str(path))
    state = model.state_dict()
    assert not any(t.is_meta for t in state.values())
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    if set(state) == {k for k in convscope.models.registry.official_converter(family)(official, model)}:
        # the official deploy form is ours (UniRepLKNet): every tensor lands unchanged, in its own place
        landed = sorted(round(t.flatten()[0].item(), 6) for t in state.values() if t.is_floating_point())
        assert len(landed) == len(set(landed)) == len(keys)
