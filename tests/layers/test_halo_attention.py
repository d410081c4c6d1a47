"""Halo attention: timm's HaloAttn to 1e-5 (same parameter names), the plain-attention identity, bad sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convscope.layers.mixers.halo_attention import HaloAttention

from ..conftest import import_timm, randomize_, rel_err


@pytest.mark.parametrize("kw,hw", [
    (dict(block_size=8, halo_size=3), (16, 24)),
    (dict(block_size=8, halo_size=2, dim_head=16), (16, 16)),
    (dict(block_size=8, halo_size=3, stride=2), (16, 24)),
    (dict(block_size=4, halo_size=1, scale_pos_embed=True, qkv_bias=True), (8, 12)),
])
def test_matches_timm_halo_attn(kw, hw):
    import_timm()
    from timm.layers.halo_attn import HaloAttn
    theirs = randomize_(HaloAttn(32, 64, num_heads=4, **kw), seed=1).eval()
    ours = HaloAttention(32, 64, num_heads=4, **kw).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: the names are timm's
    x = torch.randn(2, 32, *hw)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) < 1e-5


def test_whole_map_block_without_halo_is_attention_with_rel_pos_logits():
    torch.manual_seed(0)
    attn = randomize_(HaloAttention(16, 16, num_heads=2, block_size=6, halo_size=0), seed=3).eval()
    x = torch.randn(1, 16, 6, 6)
    q = attn.q(x).reshape(1, 2, 8, 36).transpose(-1, -2)
    k, v = attn.kv(x).reshape(1, 2, 16, 36).transpose(-1, -2).split([8, 8], dim=-1)
    # relative logits written out: row offset dy = ky - qy, column offset dx = kx - qx, table row offset + 5
    pos = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij"), -1).reshape(36, 2)
    d = pos[None, :, :] - pos[:, None, :] + 5                     # (query, key, 2)
    rh, rw = attn.pos_embed.height_rel[d[..., 0]], attn.pos_embed.width_rel[d[..., 1]]  # (36, 36, 8)
    rel = torch.einsum("bhqd,qkd->bhqk", q, rh + rw)
    a = (q @ k.transpose(-1, -2) * 8 ** -0.5 + rel).softmax(-1) @ v
    want = a.transpose(-1, -2).reshape(1, 16, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), want, rtol=1e-5, atol=1e-5)
    # and that is SDPA with the relative logits as its mask
    torch.testing.assert_close(want, F.scaled_dot_product_attention(q, k, v, attn_mask=rel).transpose(-1, -2)
                               .reshape(1, 16, 6, 6), rtol=1e-5, atol=1e-5)


def test_size_not_multiple_of_block_raises():
    attn = HaloAttention(16, num_heads=2, block_size=8, halo_size=2)
    with pytest.raises(ValueError, match="multiples of the block size 8; got 16x12"):
        attn(torch.randn(1, 16, 16, 12))


def test_unknown_option_raises_type_error():
    with pytest.raises(TypeError, match="kernel_sise"):
        HaloAttention(16, kernel_sise=3)
