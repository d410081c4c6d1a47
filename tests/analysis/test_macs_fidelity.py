"""Counted MACs against the official figures (ModelCard.macs_g) of every registered variant, and the fvcore
convention against fvcore itself."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import convscope
from convscope.analysis import MACS_EXCEPTIONS, count, macs_fidelity
from convscope.analysis.counting import MACS_CONVENTIONS
from convscope.analysis.fidelity import MacsFidelity
from convscope.models import list_models, model_card
from convscope.models.registry import MACS_CONVENTION_NAMES

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("name", list_models())
def test_counted_macs_match_official(name):
    f = macs_fidelity(name)
    if f is None:  # a card without an official figure has nothing to compare; it must say so explicitly
        assert model_card(name).macs_g is None
        return
    assert abs(f.rel_err) <= f.tolerance, (f.counted_g, f.official_g, f.convention)
    if name not in MACS_EXCEPTIONS:
        # the count rounds (or, for truncating READMEs, truncates) to the published figure
        assert f.matches_published, (f.counted_g, f.official_g)


def test_exceptions_are_few_registered_and_needed():
    assert len(MACS_EXCEPTIONS) <= 12  # each with its measured reason; a growing list is a smell
    for name, exc in MACS_EXCEPTIONS.items():
        assert name in list_models() and len(exc.reason) > 40
        f = macs_fidelity(name)
        assert not f.ok_without_exception, f"{name} no longer needs its exception"


def test_published_precision_check():
    f = MacsFidelity("x", 3.96, "fvcore", 3.9592, 3.94, (3, 224, 224))
    assert f.decimals == 2 and f.matches_published
    assert MacsFidelity("x", 3.9, "fvcore", 3.9592, 3.94, (3, 224, 224)).matches_published       # truncated
    assert not MacsFidelity("x", 3.97, "fvcore", 3.9592, 3.94, (3, 224, 224)).matches_published
    assert not MacsFidelity("x", 4.1, "fvcore", 3.9592, 3.94, (3, 224, 224)).matches_published
    assert MacsFidelity("x", 187.0, "fvcore", 186.818, 186.77, (3, 384, 384)).matches_published  # printed "187"
    assert not MacsFidelity("x", 187.0, "fvcore", 186.3, 186.2, (3, 384, 384)).matches_published


def test_conventions_agree_between_registry_and_counter():
    assert set(MACS_CONVENTION_NAMES) == set(MACS_CONVENTIONS)
    with pytest.raises(ValueError, match="macs_convention"):
        convscope.ModelCard(name="x", family="f", paper="p", arxiv="a", repo="r", params_m=1, macs_g=1,
                            macs_convention="flops")


# -- fvcore itself: the "fvcore" convention must equal FlopCountAnalysis exactly ------------------------------------
def _fvcore_total(model: nn.Module, x: torch.Tensor, attention: bool = False) -> int:
    from fvcore.nn import FlopCountAnalysis

    def sdpa(inputs, outputs):  # what fvcore counts on the official code's explicit q @ k.T and attn @ v
        q, k, v = (i.type().sizes() for i in inputs[:3])
        scores = q[0] * q[1] * q[2] * k[2]
        return scores * q[3] + scores * v[3]

    fca = FlopCountAnalysis(model.eval(), x)
    if attention:
        fca.set_op_handle("aten::scaled_dot_product_attention", sdpa)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(fca.total())


class _Zoo(nn.Module):
    """Every op fvcore prices, with and without affine parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.bn = nn.BatchNorm2d(8, affine=False)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8, elementwise_affine=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.bn(self.up(self.conv(x)))
        x = nn.functional.interpolate(self.gn(x), scale_factor=2, mode="bilinear")
        x = nn.functional.interpolate(x, scale_factor=0.5, mode="nearest")
        x = nn.functional.adaptive_avg_pool2d(x, 3)
        y = torch.einsum("bchw,bdhw->bcd", x, x)
        return self.fc(self.ln(x.permute(0, 2, 3, 1))).sum() + y.sum()


@pytest.mark.parametrize("name", ["convnext_atto", "inception_next_atto", "poolformer_s12", "caformer_s18", "zoo"])
def test_fvcore_convention_equals_fvcore(name):
    torch.manual_seed(0)
    if name == "zoo":
        model, x = _Zoo(), torch.randn(2, 4, 12, 12)
    else:
        model, x = convscope.create_model(name), torch.randn(1, 3, 64, 64)
    want = _fvcore_total(model, x, attention=name.startswith("caformer"))
    assert count(model, inputs=x).macs_as("fvcore") == want
