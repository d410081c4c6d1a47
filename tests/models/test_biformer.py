"""BiFormer specifics: the official scale and head quirks, input sizes with and without auto_pad."""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.models.biformer import BiFormer

from ..conftest import randomize_, rel_err


def _tiny(**kw) -> BiFormer:
    return BiFormer(depth=(1, 1, 1, 1), embed_dim=(32, 64, 96, 128), **kw)


def test_official_quirks():
    m = convscope.create_model("biformer_base")
    bra = m.stages[0].blocks[0].attn
    assert bra.num_heads == 3 and bra.scale == 96 ** -0.5  # full qk_dim, not the 32-channel head
    assert m.stages[3].blocks[0].attn.num_heads == 8  # the official AttentionLePE default, not 768 / 32
    assert [m.stages[i].blocks[0].attn.topk for i in range(3)] == [1, 4, 16]


def test_auto_pad_equals_unpadded_where_divisible_and_takes_other_sizes():
    m = randomize_(_tiny(), seed=0).eval()
    strict = _tiny(auto_pad=False).eval()
    strict.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 112, 224)
    with torch.no_grad():
        assert rel_err(strict(x), m(x)) == 0
        assert m(torch.randn(1, 3, 100, 150)).shape == (1, 1000)
    with pytest.raises(ValueError, match=r"multiple of n_win=7 \(inputs whose sides are multiples of 112"):
        strict(torch.randn(1, 3, 200, 224))


def test_bad_topk():
    with pytest.raises(ValueError, match="topk"):
        BiFormer(topks=(1, 4, 16, -1))


def test_stl_layout():
    m = convscope.create_model("biformer_stl")
    assert isinstance(m.stem[0], torch.nn.Conv2d) and m.stem[0].kernel_size == (4, 4)
    assert isinstance(m.stages[1].downsample[0], torch.nn.BatchNorm2d)
    blk = m.stages[0].blocks[0]
    assert isinstance(blk.pos_embed, torch.nn.Identity) and len(blk.mlp) == 3 and blk.attn.num_heads == 3
    strict = BiFormer(depth=(1, 1, 1, 1), embed_dim=(32, 64, 96, 128), stl=True, auto_pad=False)
    with pytest.raises(ValueError, match="stage-1 map is 50x56"):
        strict(torch.randn(1, 3, 200, 224))
