"""Mixers and blocks have explicit signatures: a misspelt option raises TypeError naming it."""
from __future__ import annotations

import pytest

from convscope.layers import MIXERS
from convscope.models import create_model
from convscope.models.convnext import ConvNeXtBlock
from convscope.models.hornet import HorNetBlock
from convscope.models.inception_next import MetaNeXtBlock
from convscope.models.metaformer import MetaFormerBlock
from convscope.models.unireplknet import UniRepLKNetBlock


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_mixer_rejects_unknown_option(name):
    with pytest.raises(TypeError, match="kernel_sise"):
        MIXERS[name](64, kernel_sise=3)


@pytest.mark.parametrize("block", [ConvNeXtBlock, HorNetBlock, MetaNeXtBlock, MetaFormerBlock, UniRepLKNetBlock])
def test_block_rejects_unknown_option(block):
    with pytest.raises(TypeError, match="kernel_sise"):
        block(64, kernel_sise=3)


def test_model_rejects_unknown_option_and_mixer_option():
    with pytest.raises(TypeError, match="bogus"):
        create_model("convnext_atto", bogus=1)
    with pytest.raises(TypeError, match="pool_sise"):
        create_model("poolformerv2_s12", mixer_kwargs=dict(pool_sise=5))


def test_proj_drop_reaches_only_mixers_with_a_projection():
    m = create_model("caformer_s18", proj_drop_rate=0.1)  # sepconv has no proj_drop, attention has
    attn = m.stages[2].blocks[0].token_mixer
    assert attn.proj_drop.p == 0.1
